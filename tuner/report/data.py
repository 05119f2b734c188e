"""The report of an experiment: the data of every figure and the summary, from the Optuna storage alone.

Each figure's data is computed once, here, into plain dataclasses (a
:class:`Report`); :mod:`tuner.report.plots` draws from them. Nothing here trains:
``tuner plot`` rebuilds the report from the stored trials (their ``config``,
``outcome`` and ``history`` user attributes) and each study's ``setup`` and
``final`` attributes. Two numbers build the task's model, without training:
the optimizer-state memory (one step) and the untrained model's objective.
"""

from __future__ import annotations

import math
import random
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from tuner.config.experiment import Config
from tuner.config.export import config_from_dict
from tuner.errors import UserError, mask_url
from tuner.report import evidence, plots
from tuner.report import statistics as analysis
from tuner.report.statistics import Band, ExpectedBest, Speed, Summary
from tuner.study.outcomes import best_trial, outcome
from tuner.study.resume import experiment_names
from tuner.tasks import Data, Task, is_loop, load_data, load_task
from tuner.train import loop
from tuner.train.trainer import evaluate, first_step, objective_label

# Outcomes of the trials that count toward the budget (interrupted ones are redone).
COUNTED = ("complete", "pruned", "diverged", "failed")
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
    "ped-anova": "PED-ANOVA: how far the top 25% of complete trials stray from all of them; conditional parameters included",
    "fanova": "fANOVA: variance explained; only parameters present in every complete trial (no schedule parameters)",
    "mdi": "mean decrease impurity of a random forest; only parameters present in every complete trial",
}
# Setup fields that must agree for optimizers to be compared like for like.
COMPARED = ("task", "task_args", "epochs", "batch_size", "objective", "direction", "metric")


@dataclass(frozen=True)
class TrialPoint:
    """One trial that counts toward the budget.

    ``value`` is the objective of a complete trial, the last value a pruned
    trial reported, or None for a diverged or failed trial (no finite value).
    ``lr`` and ``eps`` are its optimizer's (None where the optimizer has none).
    ``test`` is a complete trial's test objective, for the test CPE only.
    """

    outcome: str
    value: float | None
    lr: float | None
    eps: float | None
    test: float | None = None  # a complete trial's test objective (studies before tuner recorded it: None)


@dataclass(frozen=True)
class Importance:
    """One optimizer's parameter importances (summing to 1) from ``trials`` complete trials; empty, with a ``note``, when there is no estimate.

    ``sd``: each importance's standard deviation over :data:`BOOTSTRAP` resamples of the complete trials (the
    uncertainty of the estimate); ``note`` also says when the estimate is weak (fewer than
    :data:`MIN_IMPORTANCE_TRIALS` complete trials).
    """

    values: dict[str, float]
    trials: int
    note: str | None = None
    sd: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerReport:
    """What the figures and the summary show of one optimizer's study."""

    name: str
    summary: Summary
    points: list[TrialPoint]  # convergence and sensitivity figures
    best_so_far: list[float]  # convergence figure: one per point, NaN before the first complete trial
    expected: ExpectedBest  # budget figure: over what the trials are worth (analysis.worth)
    cpe: float
    cpe_test: float  # CPE of the test objective of the config picked on validation, over the complete trials
    loss: Band | None  # learning-curves figure: validation loss of the final seeds
    metric: Band | None  # ... and the task's metric
    speed: Speed | None
    importance: Importance
    memory: float | None  # optimizer state, bytes per model parameter
    step_sizes: dict[str, Any] | None = None  # the first final seed's tuner.measure.step_sizes record
    torch_class: str | None = None  # the search space's torch.optim class ("Adam"), from the study's setup


@dataclass(frozen=True)
class Report:
    """An experiment's report; ``setup`` is the first study's stored setup (task, epochs, objective, direction, metric, ...)."""

    experiment: str
    setup: dict[str, Any]
    target: float | None
    target_given: bool
    untrained: float | None  # validation objective of the untrained model: the floor of what a trial is worth
    importance: str  # the evaluator, for people
    parameters: list[str]  # every parameter with an importance, most important first: the order of every panel
    optimizers: list[OptimizerReport]
    winner: str | None
    notes: list[str]
    samplers: tuple[
        str, ...
    ] = ()  # the samplers that drew the counted trials ("unknown-sampler" for trials before tuner recorded it)

    @property
    def sampling(self) -> str:
        """Whether the expected-best curve's assumption (independent random-search trials) holds, for people."""
        if set(self.samplers) == {"random"}:
            return "random-search trials, as the estimator assumes"
        drawn = ", ".join(self.samplers) or "no"
        return f"{drawn} trials, not independent draws: optimistic (sampler: random meets the estimator's assumption)"

    @property
    def label(self) -> str:
        """The objective's name for people: ``loss`` or the task's metric."""
        return objective_label(self.setup["objective"], self.setup["metric"])

    @property
    def direction(self) -> str:
        return self.setup["direction"]


def load_studies(
    storage: optuna.storages.BaseStorage, experiment: str, only: list[str] | None = None, where: str = "--experiment"
) -> list[optuna.Study]:
    """The studies of ``experiment`` (named ``<experiment>/<space>``): those of the spaces in ``only``, in that order, or all of them."""
    names = optuna.get_all_study_names(storage)
    prefix = f"{experiment}/"
    spaces = [name.removeprefix(prefix) for name in names if name.startswith(prefix)]
    if only is not None:
        spaces = [space for space in only if space in spaces]
    if not spaces:
        experiments = experiment_names(storage)
        of = f" of {', '.join(only)}" if only is not None else ""
        raise UserError(
            f"{where}: {experiment!r} has no studies{of} in {mask_url(str(storage.url))} "
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
        if point.outcome == "complete" and (math.isnan(best) or analysis.reaches(point.value, best, direction)):
            best = point.value
        curve.append(best)
    return curve


def _evaluator(name: str) -> optuna.importance.BaseImportanceEvaluator:
    if name == "ped-anova":
        return optuna.importance.PedAnovaImportanceEvaluator(target_quantile=TOP_QUANTILE)
    if name == "fanova":
        return optuna.importance.FanovaImportanceEvaluator(seed=0)
    return optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)


def importance(study: optuna.Study, evaluator: str = "ped-anova") -> Importance:
    """Parameter importances of ``study`` by one of :data:`IMPORTANCE_EVALUATORS`, with their bootstrap sd.

    None below :data:`MIN_WEAK_IMPORTANCE_TRIALS` complete trials; a note saying the estimate is weak below
    :data:`MIN_IMPORTANCE_TRIALS`. The resamples are seeded: the same study gives the same figure.
    """
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    n = len(trials)
    if n < MIN_WEAK_IMPORTANCE_TRIALS:
        return Importance(
            {},
            n,
            f"too few complete trials for an estimate\n({n}; {MIN_WEAK_IMPORTANCE_TRIALS} at least, {MIN_IMPORTANCE_TRIALS} advised)",
        )
    values = _importances(study.direction, trials, evaluator)
    draw = random.Random(0)
    resamples = [_importances(study.direction, draw.choices(trials, k=n), evaluator) for _ in range(BOOTSTRAP)]
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
    """Every parameter with an importance, by its total importance over the optimizers, most important first (ties by name)."""
    total: dict[str, float] = {}
    for imp in importances:
        for name, value in imp.values.items():
            total[name] = total.get(name, 0.0) + value
    return sorted(total, key=lambda name: (-total[name], name))


def state_bytes_per_parameter(task: Task, data: Data, config: Config) -> float:
    """Bytes of optimizer state per model parameter, measured after one training step with ``config``.

    One forward, backward and optimizer step on a training batch of ``data``
    (on its device), then the bytes of every tensor in ``optimizer.state``
    (moments, momentum buffers, step counts) over the model's parameter count.
    Torch's random state is left as it was.
    """
    model, optimizer = first_step(task, data, config)
    state = sum(
        v.numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    return state / sum(p.numel() for p in model.parameters())


def untrained_objective(task: Task, data: Data, seed: int, objective: str, split: str = "val") -> float:
    """The ``loss`` or ``metric`` on ``split`` (``val``, default, or ``test``) of the task's model before any training, initialised with ``seed``."""
    device = data.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = task.model().to(device)
    loss, metric = evaluate(task, model, getattr(data, split))
    return loss if objective == "loss" else metric


def _measure(
    setup: dict[str, Any], configs: list[Config | None]
) -> tuple[list[float | None], list[float | None], list[str]]:
    """Each best config's optimizer-state bytes per parameter and the untrained model's validation and test objectives,
    on the CPU; a note if the task cannot be built."""
    try:
        task = load_task(setup["task"], setup["task_args"], "setup.task")
        data = load_data(task, torch.device("cpu"), "setup.task")
    except UserError as err:
        return [None] * len(configs), [None, None], [f"state memory and untrained model not measured: {err}"]
    if is_loop(task):  # its model and data are inside its fit: state memory from the optimizer its first epoch built
        return (
            [None if c is None else loop.state_bytes_per_parameter(task, c, data.device) for c in configs],
            [None, None],
            [],
        )
    memories = [None if c is None else state_bytes_per_parameter(task, data, c) for c in configs]
    untrained = [untrained_objective(task, data, setup["seed"], setup["objective"], split) for split in ("val", "test")]
    return memories, [u if math.isfinite(u) else None for u in untrained], []


def _final(study: optuna.Study) -> dict[str, Any] | None:
    """The stored final evaluation, if it is of the current best trial."""
    final, best = study.user_attrs.get("final"), best_trial(study)
    return final if final and best is not None and final["trial"] == best.number else None


def build_report(studies: list[optuna.Study], *, target: float | None = None, evaluator: str = "ped-anova") -> Report:
    """The report of one experiment's studies: every figure's data and the summary's numbers; trains nothing.

    ``target`` is the speed target in the objective's units; None derives it
    with :func:`tuner.report.statistics.default_target`. ``evaluator`` is a key of
    :data:`IMPORTANCE_EVALUATORS`.
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
    memories, (untrained, untrained_test), measure_notes = _measure(setup, configs)
    importances = [importance(study, evaluator) for study in studies]
    given = target is not None
    target = target if given else analysis.default_target(summaries, direction)
    key = "val_loss" if setup["objective"] == "loss" else "val_metric"
    optimizers = []
    for study_trials, summary, imp, memory, study_setup in zip(trials, summaries, importances, memories, setups):
        points = trial_points(study_trials)
        worths = [analysis.worth(p.value, untrained, direction) for p in points]
        expected = analysis.expected_best([w for w in worths if w is not None], len(points), direction)
        # A test value is worth no worse than the untrained model's test value, as validation values are.
        picked = [
            (p.value, analysis.worth(p.test, untrained_test, direction))
            for p in points
            if p.outcome == "complete" and p.test is not None and math.isfinite(p.test)
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
    return Report(
        experiment,
        setup,
        target,
        given,
        untrained,
        IMPORTANCE_EVALUATORS[evaluator],
        rank_parameters(importances),
        optimizers,
        None if best is None else best.optimizer,
        notes + measure_notes,
        samplers,
    )


def close_call(summaries: list[Summary], best: Summary | None, direction: str) -> str | None:
    """A note when the winner's final validation mean and the runner-up's differ by less than twice the standard
    error of their difference, sqrt(sd_a²/n_a + sd_b²/n_b) over the final seeds: the ranking of the two is not settled."""
    others = [s for s in summaries if s is not best and s.final and math.isfinite(s.stat("val_objective")[0])]
    if best is None or not others:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    second = min(others, key=lambda s: sign * s.stat("val_objective")[0])
    (m1, s1), (m2, s2) = best.stat("val_objective"), second.stat("val_objective")
    se = math.sqrt(s1**2 / len(best.final["seeds"]) + s2**2 / len(second.final["seeds"]))
    if not (math.isfinite(m1) and abs(m1 - m2) < 2 * se):
        return None
    return (
        f"close call: {best.optimizer} ({analysis.pm((m1, s1))}) and {second.optimizer} ({analysis.pm((m2, s2))}) differ by "
        f"{abs(m1 - m2):.2g}, less than twice its standard error ({se:.2g}): the ranking of the two is not settled; "
        "more final seeds (--final-seeds) would tell"
    )


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def summary(report: Report, out: Path) -> str:
    """``summary.md``: one row per optimizer, what each column means, links to the figures and to the best-config files in ``out``."""
    label, setup = report.label, report.setup
    better = "lower" if report.direction == "minimize" else "higher"
    arrow = "≤" if report.direction == "minimize" else "≥"
    seeds = next((o.summary.final["seeds"] for o in report.optimizers if o.summary.final), [])
    header = [
        "optimizer",
        f"best val {label}",
        "final val (mean ± sd)",
        "final test (mean ± sd)",
        f"epochs to {arrow} {_cell(report.target, '.4g')}",
        "CPE (val)",
        "CPE (test)",
        "complete/pruned/diverged/failed",
        "state bytes/param",
    ]
    rows = [header]
    for o in report.optimizers:
        s, c, speed = o.summary, o.summary.counts, o.speed
        reached = "" if speed is None or speed.reached == speed.runs else f" ({speed.reached}/{speed.runs} seeds)"
        rows.append(
            [
                s.optimizer + (" *" if s.optimizer == report.winner else ""),
                _cell(s.best_value, ".4g"),
                analysis.pm(s.stat("val_objective")) if s.final else "-",
                analysis.pm(s.stat("test_objective")) if s.final else "-",
                _cell(None if speed is None else speed.epochs, ".3g") + reached,
                _cell(o.cpe, ".4g"),
                _cell(o.cpe_test, ".4g"),
                f"{c['complete']}/{c['pruned']}/{c['diverged']}/{c['failed']}",
                _cell(o.memory, ".2f"),
            ]
        )
    origin = "given" if report.target_given else "default: the least good of the optimizers' final validation means"
    task = setup["task"] + (f" {setup['task_args']}" if setup["task_args"] else "")
    floor = (
        "diverged and failed trials have none and are left out (the untrained model was not measured)"
        if report.untrained is None
        else f"never worse than the untrained model's ({report.untrained:.4g}), which diverged and failed trials count as"
    )
    lines = [
        f"# {report.experiment}: which optimizer trains {task} best",
        "",
        f"Objective: validation {label}, {better} is better; {setup['epochs']} epochs per trial. `*` marks the winner: "
        "the best final validation mean (the single best trial, picked out of many on one seed, is optimistic).",
        "",
        analysis.table(rows),
        "",
        f"- **best val {label}**: the best trial of the study.",
        f"- **final val / final test**: {label} of the best trial's config re-trained on seeds {', '.join(map(str, seeds)) or '-'}, mean ± sd.",
        f"- **epochs to {arrow} target** (DeepOBS's speed): the first epoch whose validation {label} reaches the target "
        f"({_cell(report.target, '.6g')}; {origin}), mean over the final seeds; a seed that never reaches it counts as "
        f"{setup['epochs'] + 1} (epochs + 1).",
        f"- **CPE (val)** (Sivaprasad et al. 2020, on validation): the expected best validation {label} after n trials (plots/budget.png), "
        "averaged over n = 1..N with weights N - n + 1: small budgets count most, so it rewards an optimizer that is good "
        f"after few trials ({better} is better). "
        f"A trial counts with its validation {label} (a pruned one with the last it reported), {floor}. "
        f"Dodge et al.'s estimator assumes independent random-search trials; these are {report.sampling}.",
        f"- **CPE (test)**: Sivaprasad et al.'s own score: the same weighting of the expected *test* {label} of the config "
        f"picked as best on validation among n trials, over the complete trials (a pruned or diverged trial has no test "
        f"value), each never worse than the untrained model's test {label}; the test split never picks. "
        "**CPE (val)** is the validation figure before it.",
        "- **state bytes/param**: bytes of `torch.optim` state per model parameter, measured after one step of the best config.",
        *[f"- note: {note}" for note in report.notes],
        "",
        "## Figures",
        "",
        *[f"- {_link(name + '.png', 'plots/' + name + '.png')}: {about}" for name, (_, about) in plots.FIGURES.items()],
        "",
        "## Best configs",
        "",
    ]
    configs = [
        p.name for p in [out / "best.yaml", *(out / f"best-{o.name}.yaml" for o in report.optimizers)] if p.is_file()
    ]
    lines += [f"- {_link(name, name)}" for name in configs] or ["- none in this folder: `tuner study` writes them"]
    return "\n".join(lines)


def _link(text: str, target: str) -> str:
    """A Markdown link to the relative path ``target`` that CommonMark keeps a link whatever the file name:
    the target percent-encoded (spaces, non-ASCII letters, parentheses), brackets in the text escaped."""
    label = text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    return f"[{label}]({quote(target, safe='/')})"


def write_report(report: Report, out: Path) -> list[Path]:
    """Draw every figure into ``out/plots/``, write ``out/summary.md`` and ``out/evidence.md``; the paths written, the summary first."""
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    figures = plots.draw_all(report, folder)
    path = out / "summary.md"
    path.write_text(summary(report, out) + "\n")
    return [path, evidence.write_evidence(report, out), *figures]
