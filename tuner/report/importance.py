"""Parameter importances of one study, with their bootstrap spread: the data of ``importance.png``."""

from __future__ import annotations

import random
import statistics
import warnings
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.report.data import Importance

# PED-ANOVA compares the top quarter of the complete trials with all of them;
# Optuna advises at least 5 trials in the top group: hence 20 complete trials,
# the minimum for any evaluator.
TOP_QUANTILE = 0.25
MIN_IMPORTANCE_TRIALS = 20
# Below 20, down to this many complete trials, the estimate is shown as weak, with its bootstrap spread;
# below this, none (a top quarter of 2 trials).
MIN_WEAK_IMPORTANCE_TRIALS = 8
# Resamples of the complete trials (with replacement) for the spread of each importance.
BOOTSTRAP = 20
IMPORTANCE_EVALUATORS = {
    "ped-anova": (
        "PED-ANOVA: how far the top 25% of complete trials stray from all of them; conditional parameters included"
    ),
    "fanova": "fANOVA: variance explained; only parameters present in every complete trial (no schedule parameters)",
    "mdi": "mean decrease impurity of a random forest; only parameters present in every complete trial",
}


def _evaluator(name: str) -> optuna.importance.BaseImportanceEvaluator:
    if name == "ped-anova":
        return optuna.importance.PedAnovaImportanceEvaluator(target_quantile=TOP_QUANTILE)
    if name == "fanova":
        return optuna.importance.FanovaImportanceEvaluator(seed=0)
    return optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)


@dataclass(frozen=True)
class Sample:
    """What the importances of one study are computed from: its complete trials, each with only what the evaluators
    read (its parameters, their distributions and its value), and the study's direction. Plain data in memory: it can
    be computed from in a forked process, which must not use the parent's storage connections."""

    direction: optuna.study.StudyDirection
    trials: list[FrozenTrial]


def sample(study: optuna.Study) -> Sample:
    """``study``'s :class:`Sample`."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    # A trial's user attributes (its config, every epoch's history) would be deep-copied into each resample's
    # in-memory study: most of the importances' time on the quickstart's 40 trials a study.
    lean = [optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=t.value) for t in trials]
    return Sample(study.direction, lean)


def pending(complete: int) -> Importance:
    """The importances of a study of ``complete`` complete trials before they are computed (:func:`importance`
    computes them)."""
    return Importance({}, complete, "importances not computed")


def importance(of: optuna.Study | Sample, evaluator: str = "ped-anova") -> Importance:
    """Parameter importances of a study (or its :class:`Sample`) by one of :data:`IMPORTANCE_EVALUATORS`, with their
    bootstrap sd.

    None below :data:`MIN_WEAK_IMPORTANCE_TRIALS` complete trials; a note saying the estimate is weak below
    :data:`MIN_IMPORTANCE_TRIALS`. The resamples are seeded: the same study gives the same figure.
    """
    if isinstance(of, optuna.Study):
        of = sample(of)
    trials, n = of.trials, len(of.trials)
    if n < MIN_WEAK_IMPORTANCE_TRIALS:
        return Importance(
            {},
            n,
            f"too few complete trials for an estimate\n"
            f"({n}; {MIN_WEAK_IMPORTANCE_TRIALS} at least, {MIN_IMPORTANCE_TRIALS} advised)",
        )
    values = _importances(of.direction, trials, evaluator)
    draw = random.Random(0)
    resamples = [_importances(of.direction, draw.choices(trials, k=n), evaluator) for _ in range(BOOTSTRAP)]
    sd = {name: statistics.pstdev(r.get(name, 0.0) for r in resamples) for name in values}
    weak = (
        None if n >= MIN_IMPORTANCE_TRIALS else f"weak estimate: {n} complete trials, {MIN_IMPORTANCE_TRIALS} advised"
    )
    return Importance(values, n, weak, sd)


def _importances(direction: optuna.study.StudyDirection, trials: list[FrozenTrial], evaluator: str) -> dict[str, float]:
    """The importances of a study of ``trials`` (repeats allowed: a bootstrap resample), in memory."""
    study = optuna.create_study(direction=direction)
    study.add_trials(trials)
    with warnings.catch_warnings():  # about regimes of few trials: the counts in importance() are the guard
        warnings.simplefilter("ignore")
        return optuna.importance.get_param_importances(study, evaluator=_evaluator(evaluator))


def rank_parameters(importances: list[Importance]) -> list[str]:
    """Every parameter with an importance, by its total importance over the optimizers, most important first (ties by
    name)."""
    total: dict[str, float] = {}
    for imp in importances:
        for name, value in imp.values.items():
            total[name] = total.get(name, 0.0) + value
    return sorted(total, key=lambda name: (-total[name], name))
