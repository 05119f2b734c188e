"""The untrained model's objective: the floor of what a trial is worth (a diverged trial counts as no better)."""

from __future__ import annotations

import torch

from tuner.tasks.task import Data, Task
from tuner.train.trainer import evaluate


def untrained_objective(task: Task, data: Data, seed: int, objective: str, split: str = "val") -> float:
    """The ``loss`` or ``metric`` (per ``objective``) on ``split`` (``val``, the default, or ``test``) of the task's
    model before any training, initialised with ``seed``; torch's random state is left as it was.

    Only for a task with ``data`` and ``model`` (not one with its own loop, whose model is inside its ``fit``); the
    value may be NaN or infinite when the model's outputs are.
    """
    device = data.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = task.model().to(device)
    loss, metric = evaluate(task, model, getattr(data, split))
    return loss if objective == "loss" else metric
