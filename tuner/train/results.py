"""What a training run reports: each epoch's metrics, the finished run, and the step hook's type.

Shared by tuner's trainer (:mod:`tuner.train.trainer`) and tasks with their own loop (:mod:`tuner.train.loop`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# Called with the model and optimizer before each optimizer step; a function it returns is called after that step.
StepHook = Callable[[torch.nn.Module, torch.optim.Optimizer], Callable[[], None] | None]


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch reached. ``lr`` is the learning rate of the epoch's last step; ``seconds``
    the wall-clock time since training started (model built), at the end of the epoch's evaluation."""

    epoch: int
    train_loss: float
    val_loss: float
    val_metric: float
    lr: float
    seconds: float = field(compare=False)  # two runs that reached the same values are equal

    def objective(self, name: str) -> float:
        """The validation ``loss`` or ``metric``."""
        return self.val_loss if name == "loss" else self.val_metric


def objective_label(objective: str, metric: str) -> str:
    """The objective's name for people: ``loss``, or the task's metric (``accuracy``)."""
    return "loss" if objective == "loss" else metric


@dataclass
class RunResult:
    """A finished run: ``status`` is ``complete``, ``stopped`` (by the callback) or ``diverged``."""

    history: list[EpochMetrics] = field(default_factory=list)
    status: str = "complete"
    reason: str | None = None
    test_loss: float | None = None
    test_metric: float | None = None


def columns(history: list[EpochMetrics]) -> dict[str, list[float]]:
    """A run's per-epoch metrics as one list per field (JSON-safe), as trials and final runs store them."""
    return {f.name: [getattr(m, f.name) for m in history] for f in dataclasses.fields(EpochMetrics)}


def divergence(metrics: EpochMetrics) -> str | None:
    """Why an epoch ends its run as diverged (a non-finite train loss, val loss or val metric), or None."""
    if all(map(math.isfinite, (metrics.train_loss, metrics.val_loss, metrics.val_metric))):
        return None
    return (
        f"diverged at epoch {metrics.epoch}: non-finite train loss {metrics.train_loss}, "
        f"val loss {metrics.val_loss} or val metric {metrics.val_metric}"
    )
