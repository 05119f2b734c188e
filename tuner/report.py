"""The report of an experiment: the data of every figure and the summary, from the Optuna storage alone.

Each figure's data is computed once, here, into plain dataclasses (a
:class:`Report`); :mod:`tuner.plots` draws from them. Nothing here trains:
``tuner plot`` rebuilds the report from the stored trials (their ``config``,
``outcome`` and ``history`` user attributes) and each study's ``setup`` and
``final`` attributes. Two numbers build the task's model, without training:
the optimizer-state memory (one step) and the untrained model's objective.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from tuner import analysis, loop, plots
from tuner.analysis import Band, ExpectedBest, Speed, Summary
from tuner.config import Config
from tuner.errors import UserError, mask_url
from tuner.export import config_from_dict
from tuner.outcomes import outcome
from tuner.study import best_trial, experiment_names
from tuner.tasks import Data, Task, is_loop, load_data, load_task
from tuner.tasks.batches import forward
from tuner.train import Batches, evaluate, objective_label

# Outcomes of the trials that count toward the budget (interrupted ones are redone).
COUNTED = ("complete", "pruned", "diverged", "failed")
# PED-ANOVA compares the top quarter of the complete trials with all of them;
# Optuna advises at least 5 trials in the top group: hence 20 complete trials,
# the minimum for any evaluator.
TOP_QUANTILE = 0.25
MIN_IMPORTANCE_TRIALS = 20
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
    """

    outcome: str
    value: float | None
    lr: float | None
    eps: float | None


@dataclass(frozen=True)
class Importance:
    """One optimizer's parameter importances (summing to 1) from ``trials`` complete trials; empty, with a ``note``, when there is no estimate."""

    values: dict[str, float]
    trials: int
    note: str | None = None


@dataclass(frozen=True)
class OptimizerReport:
    """What the figures and the summary show of one optimizer's study."""

    name: str
    summary: Summary
    points: list[TrialPoint]  # convergence and sensitivity figures
    best_so_far: list[float]  # convergence figure: one per point, NaN before the first complete trial
    expected: ExpectedBest  # budget figure: over what the trials are worth (analysis.worth)
    cpe: float
    loss: Band | None  # learning-curves figure: validation loss of the final seeds
    metric: Band | None  # ... and the task's metric
    speed: Speed | None
    importance: Importance
    memory: float | None  # optimizer state, bytes per model parameter


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

    @property
    def label(self) -> str:
        """The objective's name for people: ``loss`` or the task's metric."""
        return objective_label(self.setup["objective"], self.setup["metric"])

    @property
    def direction(self) -> str:
        return self.setup["direction"]


def load_studies(storage: optuna.storages.BaseStorage, experiment: str, only: list[str] | None = None, where: str = "--experiment") -> list[optuna.Study]:
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
            points.append(TrialPoint(state, _value(trial, state), kwargs.get("lr"), kwargs.get("eps")))
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
    """Parameter importances of ``study`` by one of :data:`IMPORTANCE_EVALUATORS`; none below :data:`MIN_IMPORTANCE_TRIALS` complete trials."""
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if complete < MIN_IMPORTANCE_TRIALS:
        return Importance({}, complete, f"too few complete trials for an estimate\n({complete}; {MIN_IMPORTANCE_TRIALS} needed)")
    with warnings.catch_warnings():  # about regimes of few trials: the count above is the guard
        warnings.simplefilter("ignore")
        values = optuna.importance.get_param_importances(study, evaluator=_evaluator(evaluator))
    return Importance(values, complete)


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
    device = data.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = task.model().to(device)
        feed = Batches(task, data, config.batch_size, config.seed)
        optimizer, _ = config.build(model.parameters(), steps_per_epoch=feed.steps)
        inputs, target = next(feed.epoch())
        task.loss(forward(model, inputs), target).backward()
        optimizer.step()
    state = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor))
    return state / sum(p.numel() for p in model.parameters())


def untrained_objective(task: Task, data: Data, seed: int, objective: str) -> float:
    """The validation ``loss`` or ``metric`` of the task's model before any training, initialised with ``seed``."""
    device = data.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = task.model().to(device)
    loss, metric = evaluate(task, model, data.val)
    return loss if objective == "loss" else metric


def _measure(setup: dict[str, Any], configs: list[Config | None]) -> tuple[list[float | None], float | None, list[str]]:
    """Each best config's optimizer-state bytes per parameter and the untrained model's objective, on the CPU; a note if the task cannot be built."""
    try:
        task = load_task(setup["task"], setup["task_args"], "setup.task")
        data = load_data(task, torch.device("cpu"), "setup.task")
    except UserError as err:
        return [None] * len(configs), None, [f"state memory and untrained model not measured: {err}"]
    if is_loop(task):  # its model and data are inside its fit: state memory from the optimizer its first epoch built
        return [None if c is None else loop.state_bytes_per_parameter(task, c, data.device) for c in configs], None, []
    memories = [None if c is None else state_bytes_per_parameter(task, data, c) for c in configs]
    untrained = untrained_objective(task, data, setup["seed"], setup["objective"])
    return memories, untrained if math.isfinite(untrained) else None, []


def _final(study: optuna.Study) -> dict[str, Any] | None:
    """The stored final evaluation, if it is of the current best trial."""
    final, best = study.user_attrs.get("final"), best_trial(study)
    return final if final and best is not None and final["trial"] == best.number else None


def build_report(studies: list[optuna.Study], *, target: float | None = None, evaluator: str = "ped-anova") -> Report:
    """The report of one experiment's studies: every figure's data and the summary's numbers; trains nothing.

    ``target`` is the speed target in the objective's units; None derives it
    with :func:`tuner.analysis.default_target`. ``evaluator`` is a key of
    :data:`IMPORTANCE_EVALUATORS`.
    """
    setups = [study.user_attrs["setup"] for study in studies]
    setup = setups[0]
    direction = setup["direction"]
    summaries = [analysis.summarize(study.study_name.split("/", 1)[1], study, _final(study)) for study in studies]
    differ = [key for key in COMPARED if any(s.get(key) != setup.get(key) for s in setups)]
    notes = [f"the studies differ in {', '.join(differ)}: they are not compared like for like"] if differ else []
    trials = [study.get_trials(deepcopy=False) for study in studies]
    configs = [None if s.best_trial is None else config_from_dict(t[s.best_trial].user_attrs["config"]) for t, s in zip(trials, summaries)]
    memories, untrained, measure_notes = _measure(setup, configs)
    importances = [importance(study, evaluator) for study in studies]
    given = target is not None
    target = target if given else analysis.default_target(summaries, direction)
    key = "val_loss" if setup["objective"] == "loss" else "val_metric"
    optimizers = []
    for study_trials, summary, imp, memory in zip(trials, summaries, importances, memories):
        points = trial_points(study_trials)
        worths = [analysis.worth(p.value, untrained, direction) for p in points]
        expected = analysis.expected_best([w for w in worths if w is not None], len(points), direction)
        runs = (summary.final or {}).get("history") or []
        optimizers.append(OptimizerReport(
            name=summary.optimizer,
            summary=summary,
            points=points,
            best_so_far=best_so_far(points, direction),
            expected=expected,
            cpe=analysis.cpe(expected),
            loss=analysis.band([run["val_loss"] for run in runs]) if runs else None,
            metric=analysis.band([run["val_metric"] for run in runs]) if runs else None,
            speed=analysis.epochs_to_target([run[key] for run in runs], target, direction, setup["epochs"]) if runs and target is not None else None,
            importance=imp,
            memory=memory,
        ))  # fmt: skip
    best = analysis.winner(summaries, direction)
    experiment = studies[0].study_name.split("/", 1)[0]
    return Report(
        experiment, setup, target, given, untrained, IMPORTANCE_EVALUATORS[evaluator], rank_parameters(importances), optimizers,
        None if best is None else best.optimizer, notes + measure_notes,
    )  # fmt: skip


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def summary(report: Report, out: Path) -> str:
    """``summary.md``: one row per optimizer, what each column means, links to the figures and to the best-config files in ``out``."""
    label, setup = report.label, report.setup
    better = "lower" if report.direction == "minimize" else "higher"
    arrow = "≤" if report.direction == "minimize" else "≥"
    seeds = next((o.summary.final["seeds"] for o in report.optimizers if o.summary.final), [])
    header = [
        "optimizer", f"best val {label}", "final val (mean ± sd)", "final test (mean ± sd)",
        f"epochs to {arrow} {_cell(report.target, '.4g')}", "CPE", "complete/pruned/diverged/failed", "state bytes/param",
    ]  # fmt: skip
    rows = [header]
    for o in report.optimizers:
        s, c, speed = o.summary, o.summary.counts, o.speed
        reached = "" if speed is None or speed.reached == speed.runs else f" ({speed.reached}/{speed.runs} seeds)"
        rows.append([
            s.optimizer + (" *" if s.optimizer == report.winner else ""),
            _cell(s.best_value, ".4g"),
            analysis.pm(s.stat("val_objective")) if s.final else "-",
            analysis.pm(s.stat("test_objective")) if s.final else "-",
            _cell(None if speed is None else speed.epochs, ".3g") + reached,
            _cell(o.cpe, ".4g"),
            f"{c['complete']}/{c['pruned']}/{c['diverged']}/{c['failed']}",
            _cell(o.memory, ".2f"),
        ])  # fmt: skip
    origin = "given" if report.target_given else "default: the least good of the optimizers' final validation means"
    task = setup["task"] + (f" {setup['task_args']}" if setup["task_args"] else "")
    floor = (
        "diverged and failed trials have none and are left out (the untrained model was not measured)" if report.untrained is None
        else f"never worse than the untrained model's ({report.untrained:.4g}), which diverged and failed trials count as"
    )  # fmt: skip
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
        f"- **CPE** (Sivaprasad et al. 2020): the expected best validation {label} after n trials (plots/budget.png), "
        "averaged over n = 1..N with weights N - n + 1: small budgets count most, so it rewards an optimizer that is good "
        f"after few trials ({better} is better). "
        f"A trial counts with its validation {label} (a pruned one with the last it reported), {floor}.",
        "- **state bytes/param**: bytes of `torch.optim` state per model parameter, measured after one step of the best config.",
        *[f"- note: {note}" for note in report.notes],
        "",
        "## Figures",
        "",
        *[f"- [{name}.png](plots/{name}.png): {about}" for name, (_, about) in plots.FIGURES.items()],
        "",
        "## Best configs",
        "",
    ]
    configs = [p.name for p in [out / "best.yaml", *(out / f"best-{o.name}.yaml" for o in report.optimizers)] if p.is_file()]
    lines += [f"- [{name}]({name})" for name in configs] or ["- none in this folder: `tuner study` writes them"]
    return "\n".join(lines)


def write_report(report: Report, out: Path) -> list[Path]:
    """Draw every figure into ``out/plots/`` and write ``out/summary.md``; the paths written, the summary first."""
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    figures = plots.draw_all(report, folder)
    path = out / "summary.md"
    path.write_text(summary(report, out) + "\n")
    return [path, *figures]
