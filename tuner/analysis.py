"""After the studies: each optimizer's summary, the winner and the comparison table.

Plain functions on plain data; the figures of a later step draw from the same data.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Any

import optuna

from tuner import study as studies
from tuner.config import Config
from tuner.export import config_from_dict


@dataclass(frozen=True)
class Summary:
    """One optimizer's study, reduced to what the table and the exported YAML show."""

    optimizer: str
    study: str
    best_trial: int | None
    best_value: float | None
    counts: dict[str, int]
    final: dict[str, Any] | None

    def stat(self, key: str) -> tuple[float, float]:
        """Mean and sample standard deviation of a final-evaluation list."""
        return mean_sd((self.final or {}).get(key) or [])


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN if there is none or one is not finite."""
    if not values or not all(math.isfinite(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


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


def best_config(summary: Summary, study: optuna.Study, objective: str, direction: str, source: dict[str, Any]) -> Config:
    """The study's best config with the metrics it reached and where it came from, ready to export."""
    trial = study.trials[summary.best_trial]
    return dataclasses.replace(
        config_from_dict(trial.user_attrs["config"]),
        metrics=metrics(summary, objective, direction),
        source=source | {"study": study.study_name, "trial": trial.number},
    )


def pm(stat: tuple[float, float], digits: int = 4) -> str:
    """``mean ± sd`` for people."""
    return f"{stat[0]:.{digits}g} ± {stat[1]:.2g}"


def table(summaries: list[Summary], objective: str, best: Summary | None) -> str:
    """The end-of-study comparison, one row per optimizer; ``*`` marks the winner."""
    header = ["optimizer", f"best val {objective}", "final val (mean ± sd)", "final test (mean ± sd)", "complete/pruned/diverged/failed"]
    rows = [header]
    for s in summaries:
        c = s.counts
        rows.append([
            s.optimizer + (" *" if s is best else ""),
            "-" if s.best_value is None else f"{s.best_value:.4g}",
            pm(s.stat("val_objective")) if s.final else "-",
            pm(s.stat("test_objective")) if s.final else "-",
            f"{c['complete']}/{c['pruned']}/{c['diverged']}/{c['failed']}",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
