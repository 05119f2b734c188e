"""The report of an experiment built from the Optuna storage alone: every figure's data and the summary's numbers.

``tuner plot`` rebuilds the report from the stored trials (their ``config``,
``outcome`` and ``history`` user attributes) and each study's ``setup`` and
``final`` attributes; nothing here trains. Two numbers come from the task's
model rather than from the trials (the optimizer-state memory and the untrained
model's objective): :mod:`tuner.report.measured` reads them from the studies or
measures them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.config.export import config_from_dict
from tuner.errors import UserError, mask_url
from tuner.report import statistics as analysis
from tuner.report.data import OptimizerReport, Report, TrialPoint
from tuner.report.importance import IMPORTANCE_EVALUATORS, Sample, importance, pending, rank_parameters, sample
from tuner.report.measured import measured
from tuner.report.statistics import Summary
from tuner.study.outcomes import COUNTED, best_trial, outcome
from tuner.study.resume import experiment_names

# Setup fields that must agree for optimizers to be compared like for like.
COMPARED = ("task", "task_args", "epochs", "batch_size", "objective", "direction", "metric")


def load_studies(
    storage: optuna.storages.BaseStorage, experiment: str, only: list[str] | None = None, where: str = "--experiment"
) -> list[optuna.Study]:
    """The studies of ``experiment`` (named ``<experiment>/<space>``): those of the spaces in ``only``, in that order,
    or all of them. Raises :class:`~tuner.errors.UserError` naming ``where`` when there is none, or when one was not
    made by ``tuner study`` (no ``setup`` attribute)."""
    names = optuna.get_all_study_names(storage)
    prefix = f"{experiment}/"
    spaces = [name.removeprefix(prefix) for name in names if name.startswith(prefix)]
    if only is not None:
        spaces = [space for space in only if space in spaces]
    if not spaces:
        experiments = experiment_names(storage)
        of = f" of {', '.join(only)}" if only is not None else ""
        place = (
            mask_url(str(storage.url)) if isinstance(storage, optuna.storages.RDBStorage) else type(storage).__name__
        )
        raise UserError(
            f"{where}: {experiment!r} has no studies{of} in {place} "
            f"(experiments there: {', '.join(experiments) or 'none'})"
        )
    studies = [optuna.load_study(study_name=prefix + space, storage=storage) for space in spaces]
    for study in studies:
        if "setup" not in study.user_attrs:
            raise UserError(f"{where}: study {study.study_name!r} was not made by tuner study (no 'setup' attribute)")
    return studies


def trial_points(trials: list[FrozenTrial]) -> list[TrialPoint]:
    """The trials that count toward the budget, in the order they ran."""
    points = []
    for trial in trials:
        state = outcome(trial)
        if state in COUNTED:
            kwargs = trial.user_attrs.get("config", {}).get("optimizer", {}).get("kwargs", {})
            points.append(
                TrialPoint(
                    state,
                    _value(trial, state),
                    kwargs.get("lr"),
                    kwargs.get("eps"),
                    trial.user_attrs.get("test_objective"),
                )
            )
    return points


def _value(trial: FrozenTrial, state: str) -> float | None:
    if state == "complete":
        return trial.value
    if state == "pruned" and trial.intermediate_values:
        last = trial.intermediate_values[max(trial.intermediate_values)]
        return last if math.isfinite(last) else None
    return None


def best_so_far(points: list[TrialPoint], direction: str) -> list[float]:
    """After each trial, the best objective of the complete trials so far (NaN before the first)."""
    best, curve = math.nan, []
    for point in points:
        value = point.value if point.outcome == "complete" else None
        if value is not None and (math.isnan(best) or analysis.reaches(value, best, direction)):
            best = value
        curve.append(best)
    return curve


def _final(study: optuna.Study) -> dict[str, Any] | None:
    """The stored final evaluation, if it is of the current best trial."""
    final, best = study.user_attrs.get("final"), best_trial(study)
    return final if final and best is not None and final["trial"] == best.number else None


def build_report(
    studies: list[optuna.Study], *, target: float | None = None, evaluator: str = "ped-anova", importances: bool = True
) -> Report:
    """The report of one experiment's studies: every figure's data and the summary's numbers; trains nothing.

    ``target`` is the speed target in the objective's units; None derives it
    with :func:`tuner.report.statistics.default_target`. ``evaluator`` is a key of
    :data:`IMPORTANCE_EVALUATORS`. ``importances``: False leaves the parameter importances pending
    (:func:`tuner.report.importance.pending`; only ``importance.png`` shows them): :func:`with_importances` computes
    them.
    """
    setups = [study.user_attrs["setup"] for study in studies]
    setup = setups[0]
    direction = setup["direction"]
    summaries = [analysis.summarize(study.study_name.split("/", 1)[1], study, _final(study)) for study in studies]
    differ = [key for key in COMPARED if any(s.get(key) != setup.get(key) for s in setups)]
    notes = [f"the studies differ in {', '.join(differ)}: they are not compared like for like"] if differ else []
    trials = [study.get_trials(deepcopy=False) for study in studies]
    configs = [
        None if s.best_trial is None else config_from_dict(t[s.best_trial].user_attrs["config"])
        for t, s in zip(trials, summaries)
    ]
    memories, (untrained, untrained_test), measure_notes = measured(setup, [s.final for s in summaries], configs)
    pending_importances = [pending(sum(t.state == TrialState.COMPLETE for t in ts)) for ts in trials]
    given = target is not None
    target = target if given else analysis.default_target(summaries, direction)
    key = "val_loss" if setup["objective"] == "loss" else "val_metric"
    optimizers = []
    for study_trials, summary, imp, memory, study_setup in zip(
        trials, summaries, pending_importances, memories, setups
    ):
        points = trial_points(study_trials)
        worths = [analysis.worth(p.value, untrained, direction) for p in points]
        expected = analysis.expected_best([w for w in worths if w is not None], len(points), direction)
        # A test value is worth no worse than the untrained model's test value, as validation values are.
        picked = [
            (p.value, analysis.worth(p.test, untrained_test, direction))
            for p in points
            if p.outcome == "complete" and p.value is not None and p.test is not None and math.isfinite(p.test)
        ]
        runs = (summary.final or {}).get("history") or []
        optimizers.append(
            OptimizerReport(
                name=summary.optimizer,
                summary=summary,
                points=points,
                best_so_far=best_so_far(points, direction),
                expected=expected,
                cpe=analysis.cpe(expected),
                cpe_test=analysis.cpe(analysis.expected_picked(picked, len(picked), direction)),
                loss=analysis.band([run["val_loss"] for run in runs]) if runs else None,
                metric=analysis.band([run["val_metric"] for run in runs]) if runs else None,
                speed=analysis.epochs_to_target([run[key] for run in runs], target, direction, setup["epochs"])
                if runs and target is not None
                else None,
                importance=imp,
                memory=memory,
                step_sizes=((summary.final or {}).get("step_sizes") or [None])[0],
                torch_class=study_setup.get("optimizer"),
            )
        )
    best = analysis.winner(summaries, direction)
    close = close_call(summaries, best, direction)
    notes += [close] if close else []
    experiment = studies[0].study_name.split("/", 1)[0]
    samplers = tuple(
        sorted({t.user_attrs.get("sampler", "unknown-sampler") for ts in trials for t in ts if outcome(t) in COUNTED})
    )
    built = Report(
        experiment,
        setup,
        target,
        given,
        untrained,
        IMPORTANCE_EVALUATORS[evaluator],
        [],
        optimizers,
        None if best is None else best.optimizer,
        notes + measure_notes,
        samplers,
    )
    return with_importances(built, [sample(study) for study in studies], evaluator) if importances else built


def with_importances(report: Report, samples: list[Sample], evaluator: str = "ped-anova") -> Report:
    """``report`` with the parameter importances of its studies' ``samples`` (:func:`tuner.report.importance.sample`,
    in the report's order) by ``evaluator``, and its parameters ranked by them. Reads no storage: a forked process can
    run it."""
    found = [importance(of, evaluator) for of in samples]
    optimizers = [dataclasses.replace(o, importance=imp) for o, imp in zip(report.optimizers, found)]
    return dataclasses.replace(report, parameters=rank_parameters(found), optimizers=optimizers)


def close_call(summaries: list[Summary], best: Summary | None, direction: str) -> str | None:
    """A note when the winner's final validation mean and the runner-up's differ by less than twice the standard
    error of their difference, sqrt(sd_a²/n_a + sd_b²/n_b) over the final seeds: the ranking of the two is not
    settled."""
    others = [s for s in summaries if s is not best and s.final and math.isfinite(s.stat("val_objective")[0])]
    if best is None or not others:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    second = min(others, key=lambda s: sign * s.stat("val_objective")[0])
    (m1, s1), (m2, s2) = best.stat("val_objective"), second.stat("val_objective")
    se = math.sqrt(s1**2 / len(best.seeds) + s2**2 / len(second.seeds))
    if not (math.isfinite(m1) and abs(m1 - m2) < 2 * se):
        return None
    return (
        f"close call: {best.optimizer} ({analysis.pm((m1, s1))}) and {second.optimizer} ({analysis.pm((m2, s2))}) "
        "differ by "
        f"{abs(m1 - m2):.2g}, less than twice its standard error ({se:.2g}): the ranking of the two is not settled; "
        "more final seeds (--final-seeds) would tell"
    )
