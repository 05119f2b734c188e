"""After the studies: each optimizer's summary, the winner, and the statistics of the report.

Plain functions on plain data: what a trial is worth, the expected best
objective at a budget (Dodge et al. 2019) and its CPE score, epochs to a target
(DeepOBS's speed), mean and sd bands of learning curves. :mod:`tuner.report.data`
applies them to the studies.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, overload

import optuna

from tuner.config.experiment import Config
from tuner.config.export import config_from_dict
from tuner.study import outcomes as studies


@dataclass(frozen=True)
class Summary:
    """One optimizer's study, reduced to what the summary and the exported YAML show."""

    optimizer: str
    study: str
    best_trial: int | None
    best_value: float | None
    counts: dict[str, int]
    final: dict[str, Any] | None = field(
        repr=False
    )  # per-seed histories, step sizes, ablation runs: thousands of numbers

    @property
    def seeds(self) -> list[int]:
        """The final evaluation's seeds (none without one)."""
        return (self.final or {}).get("seeds", [])

    def stat(self, key: str) -> tuple[float, float]:
        """Mean and sample standard deviation of a final-evaluation list."""
        return mean_sd((self.final or {}).get(key) or [])


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN if there is none or one is not finite."""
    if not values or not all(math.isfinite(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def welch_pvalue(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test (Welch 1947) that ``a`` and ``b`` (two values or more each) come from
    distributions of the same mean, without assuming equal variances: what ``scipy.stats.ttest_ind(a, b,
    equal_var=False).pvalue`` gives, through the Student t distribution of ``scipy.special`` (``stdtr``), whose import
    takes a fifth of ``scipy.stats``'s (0.2 s against 0.8-1 s, before a study's result line). NaN where neither side
    varies."""
    from scipy.special import stdtr  # imported only when a report is written

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    spread = va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)
    if spread == 0:
        return math.nan
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    return float(2 * stdtr((va + vb) ** 2 / spread, -abs(t)))


def summarize(optimizer: str, study: optuna.Study, final: dict[str, Any] | None) -> Summary:
    best = studies.best_trial(study)
    return Summary(
        optimizer=optimizer,
        study=study.study_name,
        best_trial=None if best is None else best.number,
        best_value=None if best is None else best.value,
        counts=studies.counts(study),
        final=final,
    )


def winner(summaries: list[Summary], direction: str) -> Summary | None:
    """The optimizer whose best config did best over the final seeds (validation mean).

    The single best trial is optimistic, picked out of many on one seed; the
    final seeds are fresh, so their mean is the fairer judge. A config that
    diverged on a final seed ranks after every one that did not.
    """
    ranked = [s for s in summaries if s.final]
    if not ranked:
        return None
    sign = -1.0 if direction == "maximize" else 1.0

    def key(s: Summary) -> tuple[bool, float]:
        mean = s.stat("val_objective")[0]
        assert s.best_value is not None  # a study with a final evaluation has a best trial
        return (not math.isfinite(mean), sign * (mean if math.isfinite(mean) else s.best_value))

    return min(ranked, key=key)


def metrics(summary: Summary, objective: str, direction: str) -> dict[str, Any]:
    """The ``metrics`` section of a best-config YAML file."""
    data: dict[str, Any] = {
        "objective": objective,
        "direction": direction,
        "tuning": {"trial": summary.best_trial, "val_objective": summary.best_value},
    }
    if summary.final:
        final: dict[str, Any] = {"seeds": summary.final["seeds"]}
        for key in ("val_objective", "test_objective", "val_metric", "test_metric"):
            mean, sd = summary.stat(key)
            final[key] = {"mean": mean, "sd": sd, "values": summary.final[key]}
        data["final"] = final
    return data


def best_config(
    summary: Summary, study: optuna.Study, objective: str, direction: str, source: dict[str, Any]
) -> Config:
    """The study's best config with the metrics it reached and where it came from, ready to export. Raises
    ``ValueError`` when the study has no best trial."""
    if summary.best_trial is None:
        raise ValueError(f"best_config: study {summary.study!r} has no best trial")
    trial = study.get_trials(deepcopy=False)[summary.best_trial]  # study.trials would copy every trial's history
    return dataclasses.replace(
        config_from_dict(trial.user_attrs["config"]),
        metrics=metrics(summary, objective, direction),
        source=source | {"study": study.study_name, "trial": trial.number},
    )


def pm(stat: tuple[float, float], digits: int = 4) -> str:
    """``mean ± sd`` for people, as a measurement with its uncertainty is written: the sd to 2 significant
    digits and the mean to the same decimal place (``0.0807 ± 0.0068``, ``0.081 ± 0.020``), so that
    numbers side by side have the precision their spread allows. ``digits`` significant digits for the
    mean when the sd is 0 (one seed) or not finite, or the numbers are too large for fixed point."""
    mean, sd = stat
    if not (math.isfinite(mean) and math.isfinite(sd)) or sd == 0 or max(abs(mean), sd) >= 1e6:
        return f"{mean:.{digits}g} ± {sd:.2g}"
    decimals = 1 - math.floor(math.log10(float(f"{sd:.2g}")))  # of the rounded sd: 0.0996 is 0.10
    return f"{round(mean, decimals):.{max(decimals, 0)}f} ± {round(sd, decimals):.{max(decimals, 0)}f}"


def over_seeds(values: list[float], digits: int = 4) -> str:
    """Final-seed values for people: ``mean ± sd`` (:func:`pm`) over several seeds; the value and ``(1 seed)`` for one
    (one value has no spread to show, and ``± 0`` would claim one); ``-`` for none."""
    if len(values) == 1:
        return f"{values[0]:.{digits}g} (1 seed)"
    return pm(mean_sd(values), digits) if values else "-"


def table(rows: list[list[str]]) -> str:
    """A Markdown table whose columns also line up in a terminal; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class ExpectedBest:
    """Expected best objective of ``n`` trials drawn from a study's trials, for n = 1, 2, ... (Dodge et al. 2019)."""

    n: list[int]
    mean: list[float]
    sd: list[float]


def expected_best(values: list[float], budget: int, direction: str) -> ExpectedBest:
    """The expected best of ``n`` values drawn with replacement from ``values``, and its standard deviation,
    n = 1..budget.

    "Show Your Work" (Dodge et al. 2019): with ``values`` sorted from worst to
    best as v(1)..v(N), E[best of n] = sum_i v(i) [(i/N)^n - ((i-1)/N)^n]; the
    best is the largest value when maximizing, the smallest when minimizing.
    No values give an empty curve. The estimator assumes that the values are
    independent, identically drawn trials (random search); from a sampler that
    learns (TPE) it is optimistic.
    """
    return _best_of_n(sorted(values, reverse=direction == "minimize"), budget)


def expected_picked(pairs: list[tuple[float, float]], budget: int, direction: str) -> ExpectedBest:
    """The expected test value of the trial picked on validation among ``n`` drawn with replacement, n = 1..budget.

    ``pairs`` are (validation, test) values of trials. Sivaprasad et al. 2020
    score the test performance of the configuration that was best on
    validation: the weights of :func:`expected_best`, over the trials sorted by
    their validation value, applied to their test values. Trials tied on
    validation are ordered as they come (the later counts as the better).
    """
    ordered = sorted(pairs, key=lambda pair: pair[0], reverse=direction == "minimize")
    return _best_of_n([test for _, test in ordered], budget)


def _best_of_n(ordered: list[float], budget: int) -> ExpectedBest:
    """Mean and sd of ``ordered[i-1]`` weighted by the chance that the i-th of N (worst first) is the best of n
    draws."""
    size = len(ordered)
    budgets = list(range(1, budget + 1)) if size else []
    means, sds = [], []
    for n in budgets:
        weights = [(i / size) ** n - ((i - 1) / size) ** n for i in range(1, size + 1)]  # P(v(i) is the best of n)
        mean = sum(w * v for w, v in zip(weights, ordered))
        square = sum(w * v * v for w, v in zip(weights, ordered))
        means.append(mean)
        sds.append(math.sqrt(max(square - mean * mean, 0.0)))
    return ExpectedBest(budgets, means, sds)


def cpe(curve: ExpectedBest) -> float:
    """The curve's area score with linearly decreasing weights (CPE, Sivaprasad et al. 2020).

    The weighted mean of E[best of n] over n = 1..N with weights proportional to
    N - n + 1: small budgets count most, so an optimizer that is good after a
    few trials scores best. In the objective's units; NaN for an empty curve.
    """
    size = len(curve.mean)
    if not size:
        return math.nan
    weights = [size - i for i in range(size)]
    return sum(w * m for w, m in zip(weights, curve.mean)) / sum(weights)


def reaches(value: float, target: float, direction: str) -> bool:
    """Whether ``value`` is at least as good as ``target``."""
    return value <= target if direction == "minimize" else value >= target


@overload
def worth(value: float, floor: float | None, direction: str) -> float: ...
@overload
def worth(value: float | None, floor: float | None, direction: str) -> float | None: ...
def worth(value: float | None, floor: float | None, direction: str) -> float | None:
    """What a trial's ``value`` is worth: never worse than ``floor`` (the untrained model's value); no value is worth
    ``floor``.

    Without a floor the value is kept as it is. A loss of 1e19 and a loss just
    above the untrained model's both mean the trial learned nothing; without the
    floor, a few exploded trials would dominate every mean.
    """
    if floor is None or (value is not None and reaches(value, floor, direction)):
        return value
    return floor


@dataclass(frozen=True)
class Speed:
    """Epochs to reach a target (DeepOBS's speed): the mean over runs, and how many runs reached it."""

    epochs: float
    reached: int
    runs: int


def epochs_to_target(histories: list[list[float]], target: float, direction: str, epochs: int) -> Speed:
    """The first epoch (1-based) whose value reaches ``target``, averaged over runs.

    ``histories`` holds one run's validation objective per epoch each. As in
    DeepOBS, a run that never reaches the target counts as ``epochs + 1``
    (one past the end of training); ``reached`` says how many did.
    """
    firsts = [next((e for e, v in enumerate(h, 1) if reaches(v, target, direction)), None) for h in histories]
    counted = [epochs + 1 if first is None else first for first in firsts]
    return Speed(statistics.fmean(counted) if counted else math.nan, sum(f is not None for f in firsts), len(histories))


def default_target(summaries: list[Summary], direction: str) -> float | None:
    """The least good of the optimizers' final-seed mean validation objectives: a level every optimizer reaches on
    average.

    None when no optimizer has a finite final mean.
    """
    means = [m for m in (s.stat("val_objective")[0] for s in summaries if s.final) if math.isfinite(m)]
    if not means:
        return None
    return max(means) if direction == "minimize" else min(means)


@dataclass(frozen=True)
class Band:
    """Mean and standard deviation over runs of a per-epoch series; ``epochs`` count from 1."""

    epochs: list[int]
    mean: list[float]
    sd: list[float]


def band(series: list[list[float]]) -> Band:
    """Per epoch, the mean and sd over the runs that reached that epoch with a finite value (NaN where none did)."""
    length = max(map(len, series), default=0)
    stats = [mean_sd([s[i] for s in series if i < len(s) and math.isfinite(s[i])]) for i in range(length)]
    return Band(list(range(1, length + 1)), [m for m, _ in stats], [sd for _, sd in stats])
