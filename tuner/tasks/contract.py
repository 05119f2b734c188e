"""The task contract as one check, for the built-in tasks and for a plugin author's own tests::

from tuner.tasks.contract import check_task

def test_my_task_keeps_the_contract():
    check_task("my-task")              # or check_task(make_task(), device="cuda")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from tuner.config.experiment import Config
from tuner.errors import UserError
from tuner.tasks.check import load_data
from tuner.tasks.loading import load_task
from tuner.tasks.task import Data, Task, is_loop
from tuner.train.trainer import evaluate, train

# The learning rate of the one epoch of Adam that must lower the validation loss.
CHECK_LR = 1e-3
SPLITS = ("train", "val", "test")


def _same(a: Data, b: Data) -> bool:
    """Whether two calls of ``data()`` gave the same data: every tensor of in-memory splits, or, for Datasets, their
    lengths and first samples, read under one torch seed (so that random augmentation draws alike)."""
    if a.in_memory != b.in_memory:
        return False
    if a.in_memory:
        return all(
            torch.equal(getattr(getattr(a, s), t).cpu(), getattr(getattr(b, s), t).cpu())
            for s in SPLITS
            for t in ("x", "y")
        )
    firsts = []
    for data in (a, b):
        torch.manual_seed(0)
        firsts.append([(len(getattr(data, s)), getattr(data, s)[0]) for s in SPLITS])
    return _equal(*firsts)


def _equal(a: Any, b: Any) -> bool:
    """Equality of nested samples: tensors element by element, dicts, tuples and lists item by item."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(map(_equal, a, b))
    return bool(a == b)


def _untrained_val_loss(task: Task, data: Data, device: torch.device, broken: Callable[[str], UserError]) -> float:
    """Check the data and model rules of ``task`` (a task with data, model, loss and score); returns its untrained
    model's validation loss."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(1)
        first = task.data()
        torch.manual_seed(2)
        if not _same(first, task.data()):
            raise broken(
                "data() differs between calls (allowed: the same data every time, from a seed of the task's own)"
            )
        tensors = data.tensors()
        placed = {str(t.device) for s in tensors for t in (s.x, s.y)} if tensors is not None else {str(data.device)}
        if placed != {str(data.device)} or data.device.type != device.type:
            raise broken(f"after loading for {device}, the data is on {', '.join(sorted(placed))}")
        models = []
        for _ in range(2):
            torch.manual_seed(0)
            models.append(task.model().state_dict())
        if any(not torch.equal(t, models[1][k]) for k, t in models[0].items()):
            raise broken("model() built under the same torch seed gives different initial parameters")
        torch.manual_seed(0)
        val = data.val
        assert val is not None, "a task with data() (not its own loop) has a validation split"
        initial_loss, _ = evaluate(task, task.model().to(device), val)
    return initial_loss


def check_task(task: Task | str, task_args: dict[str, Any] | None = None, device: str | torch.device = "cpu") -> None:
    """Check that ``task`` (a task, or a name for :func:`~tuner.tasks.loading.load_task` with ``task_args``) keeps
    the contract.

    What ``tuner study`` checks before a study (valid attributes; data, model,
    loss and metric fit together in one training step), and beyond it:

    - the data is the same on every call, whatever torch's random state (it
      comes from a fixed seed of the task, not the trial's seed);
    - after loading, every tensor of the data is on ``device`` (default CPU);
    - the model's initial parameters are determined by torch's seed;
    - one epoch of Adam (lr=1e-3, the task's batch size) runs without
      diverging, lowers the validation loss, and has a finite test loss and
      metric;
    - on the CPU, two such epochs with the same seed are identical.

    A task with its own loop (``fit``, see :mod:`tuner.train.loop`) has no data or
    model to check apart: its epoch of Adam must run, report, not diverge,
    return finite test values, and repeat with the seed on the CPU.

    Raises :class:`~tuner.errors.UserError` with one line naming the task and
    the first rule it breaks. Takes about two epochs of training.
    """
    if isinstance(task, str):
        task = load_task(task, task_args)
    device = torch.device(device)
    data = load_data(task, device)

    def broken(problem: str) -> UserError:
        return UserError(f"task {task.name!r} breaks the contract: {problem}")

    initial_loss = None if is_loop(task) else _untrained_val_loss(task, data, device, broken)

    config = Config("Adam", {"lr": CHECK_LR}, "constant", {}, task.name, {}, 1, task.batch_size, 0, "loss")
    runs = [train(task, data, config, test=True) for _ in range(2 if device.type == "cpu" else 1)]
    run = runs[0]
    if run.status != "complete":
        raise broken(f"one epoch of Adam (lr={CHECK_LR}): {run.reason}")
    after = run.history[-1].val_loss
    if initial_loss is not None and not after < initial_loss:
        raise broken(
            f"one epoch of Adam (lr={CHECK_LR}) did not lower the validation loss ({initial_loss:.6g} -> {after:.6g})"
        )
    if not (
        run.test_loss is not None
        and run.test_metric is not None
        and math.isfinite(run.test_loss)
        and math.isfinite(run.test_metric)
    ):
        raise broken(f"test loss {run.test_loss} or test metric {run.test_metric} is not finite")
    if runs[-1].history != run.history:
        raise broken(
            "two runs with the same seed differ on the CPU (allowed: randomness only from torch's seeded generators)"
        )
