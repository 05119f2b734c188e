"""Tasks: the PyTorch problems that studies tune optimizers on.

A task is any object with the attributes of :class:`Task`. It is named by a
registry name (``digits-mlp``) or a dotted path ``package.module:factory``;
``task_args`` from the experiment become the factory's keyword arguments.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from tuner.config import is_int
from tuner.errors import UserError


@dataclass(frozen=True)
class Split:
    """Inputs and targets of one split, indexed along the first dimension."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Data:
    """Train, validation and test splits of an in-memory task."""

    train: Split
    val: Split
    test: Split

    def to(self, device: torch.device | str) -> Data:
        return Data(self.train.to(device), self.val.to(device), self.test.to(device))


@runtime_checkable
class Task(Protocol):
    """What the trainer needs from a task.

    ``metric`` names what :meth:`score` returns (``"accuracy"``), ``direction``
    says whether it is better high (``"maximize"``) or low (``"minimize"``).
    ``batch_size`` is used when the experiment gives none; ``epochs`` is the
    task's suggested training length (experiments always state theirs).
    """

    name: str
    metric: str
    direction: str
    epochs: int
    batch_size: int

    def data(self) -> Data:
        """The splits, built deterministically (same data on every call)."""

    def model(self) -> torch.nn.Module:
        """A freshly initialised model (the caller seeds torch first)."""

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The scalar training loss of a batch."""

    def score(self, output: torch.Tensor, target: torch.Tensor) -> float:
        """The metric over a whole split."""


BUILTIN: dict[str, str] = {
    "digits-mlp": "tuner.tasks.digits:DigitsMLP",
    "quadratic-deep": "tuner.tasks.quadratic:QuadraticDeep",
}


def _factory(spec: str, where: str) -> Any:
    path = BUILTIN.get(spec, spec)
    if ":" not in path:
        raise UserError(f"{where}: {spec!r} is not a task (allowed: {', '.join(BUILTIN)}, or a dotted path package.module:factory)")
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # a plugin's import can fail in any way
        raise UserError(f"{where}: {spec!r}: cannot import module {module_name!r}: {type(err).__name__}: {err}") from None
    if not hasattr(module, attribute):
        raise UserError(f"{where}: {spec!r}: module {module_name!r} has no attribute {attribute!r} (allowed: a callable task factory)")
    factory = getattr(module, attribute)
    if not callable(factory):
        raise UserError(f"{where}: {spec!r}: {attribute!r} is a {type(factory).__name__}, not callable (allowed: a callable task factory)")
    return factory


def load_task(spec: str, args: dict[str, Any] | None = None, where: str = "task") -> Task:
    """The task named ``spec``, built with ``args``; a clear :class:`UserError` naming ``where`` when it cannot be."""
    factory = _factory(spec, where)
    args = args or {}
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        accepted = [p.name for p in signature.parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            for key in args:
                if key not in accepted:
                    raise UserError(f"{where}: {spec!r}: task_args: unknown argument {key!r} (allowed: {', '.join(accepted) or 'none'})")
    try:
        task = factory(**args)
    except Exception as err:  # a factory may reject its arguments in any way
        raise UserError(f"{where}: {spec!r}: the factory raised {type(err).__name__}: {err}") from None
    if not isinstance(task, Task):
        missing = [name for name in ("name", "metric", "direction", "epochs", "batch_size", "data", "model", "loss", "score") if not hasattr(task, name)]
        raise UserError(f"{where}: {spec!r}: the factory returned {type(task).__name__}, which lacks {', '.join(missing)} (allowed: an object with the attributes of tuner.tasks.Task)")
    if task.direction not in ("minimize", "maximize"):
        raise UserError(f"{where}: {spec!r}: direction {task.direction!r} is not allowed (minimize, maximize)")
    if not is_int(task.batch_size):
        raise UserError(f"{where}: {spec!r}: batch_size {task.batch_size!r} is not allowed (an integer >= 1)")
    return task


def load_data(task: Task, device: torch.device, where: str = "task") -> Data:
    """The task's data on ``device``, checked with one cheap forward pass of a fresh model.

    A task whose data, model, loss or metric do not fit together fails here
    with one line, before any study exists, rather than in every trial.
    """
    try:
        data = task.data()
        if not isinstance(data, Data):
            raise TypeError(f"data() returned {type(data).__name__} (allowed: tuner.tasks.Data)")
        empty = [name for name in ("train", "val", "test") if len(getattr(data, name)) == 0]
        if empty:
            raise ValueError(f"the {', '.join(empty)} split is empty")
        data = data.to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model = task.model().to(device)
            output = model(data.train.x[:2])
            loss = task.loss(output, data.train.y[:2])
            if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
                raise TypeError(f"loss() returned {getattr(loss, 'shape', type(loss).__name__)} (allowed: a scalar tensor)")
            score = task.score(output.detach(), data.train.y[:2])
            if not isinstance(score, (int, float)):
                raise TypeError(f"score() returned {type(score).__name__} (allowed: a float)")
    except Exception as err:  # a task's code may fail in any way
        raise UserError(f"{where}: {task.name!r} does not work: {type(err).__name__}: {err}") from None
    return data


def describe() -> dict[str, str]:
    """Each built-in task's name with the first line of its docstring."""
    return {name: (inspect.getdoc(_factory(name, "task")) or "").splitlines()[0] for name in BUILTIN}
