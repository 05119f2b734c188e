"""The report's data: plain dataclasses holding what every figure and the summary show.

:mod:`tuner.report.build` fills them from the Optuna storage; the figure modules
(``tuner.report.*_plot``) and :mod:`tuner.report.summary` read them. Nothing here
computes or draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuner.report.statistics import Band, ExpectedBest, Speed, Summary
from tuner.train.results import objective_label


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
    """One optimizer's parameter importances (summing to 1) from ``trials`` complete trials; empty, with a ``note``,
    when there is no estimate.

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
    """An experiment's report; ``setup`` is the first study's stored setup (task, epochs, objective, direction, metric,
    ...)."""

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
    def final_seeds(self) -> list[int]:
        """The seeds of the final evaluations (every study's are the same; none when no study has one)."""
        return next((o.summary.seeds for o in self.optimizers if o.summary.final), [])

    @property
    def label(self) -> str:
        """The objective's name for people: ``loss`` or the task's metric."""
        return objective_label(self.setup["objective"], self.setup["metric"])

    @property
    def direction(self) -> str:
        return self.setup["direction"]
