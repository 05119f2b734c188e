"""Tasks: the PyTorch problems that studies tune optimizers on.

A task is any object with the attributes of :class:`Task`. It is named by a
built-in name (``digits-mlp``, see :data:`BUILTIN`), the name of an entry
point in the group ``tuner.tasks`` of an installed package, or a dotted path
``package.module:factory``, tried in that order; ``task_args`` from the
experiment become the factory's keyword arguments. :func:`load_data` checks a
task with one training step before any study; :mod:`tuner.tasks.contract`
checks it further, for tests.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch.nn import functional as F

from tuner.config import check_type, is_int, is_number
from tuner.errors import UserError, reason


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


class Classifier:
    """Cross-entropy loss and accuracy over the last dimension of the output (the classes).

    For one label per sample (output ``(N, C)``, target ``(N,)``) or one per
    token (output ``(N, L, C)``, target ``(N, L)``): accuracy is then per token.
    """

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.flatten(0, -2), target.flatten())

    def score(self, output: torch.Tensor, target: torch.Tensor) -> float:
        return (output.argmax(-1) == target).float().mean().item()


def generated(sample: Callable[[int, torch.Generator], Split], sizes: tuple[int, int, int], seed: int) -> Data:
    """Train, validation and test splits of ``sizes`` samples, drawn in that order by ``sample(n, generator)``.

    The generator is seeded with ``seed``, a constant of the task, not the
    trial's seed: every trial and every call sees the same data.
    """
    generator = torch.Generator().manual_seed(seed)
    return Data(*(sample(n, generator) for n in sizes))


# The built-in tasks: name -> module:factory.
BUILTIN: dict[str, str] = {
    "digits-mlp": "tuner.tasks.digits:DigitsMLP",
    "digits-cnn": "tuner.tasks.digits_cnn:DigitsCNN",
    "lstm-adding": "tuner.tasks.lstm_adding:LSTMAdding",
    "tiny-transformer": "tuner.tasks.tiny_transformer:TinyTransformer",
    "quadratic-deep": "tuner.tasks.quadratic:QuadraticDeep",
    "rosenbrock": "tuner.tasks.rosenbrock:Rosenbrock",
    "bag-of-words": "tuner.tasks.bag_of_words:BagOfWordsTask",
    "drifting-regression": "tuner.tasks.drifting:DriftingRegression",
    "logistic-regression": "tuner.tasks.logistic:LogisticRegression",
}


# Installed packages offer tasks as entry points of this group (name = "module:factory").
ENTRY_POINT_GROUP = "tuner.tasks"
# Samples in the one cheap training step that checks a task before any study exists.
CHECK_BATCH = 8
# The attributes of a Task.
FIELDS = ("name", "metric", "direction", "epochs", "batch_size", "data", "model", "loss", "score")


def plugins() -> dict[str, importlib.metadata.EntryPoint]:
    """The tasks of installed packages: entry points of the group ``tuner.tasks``, by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _package(ep: importlib.metadata.EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "an installed package"


def _factory(spec: str, where: str) -> Any:
    """The task factory named ``spec``: a built-in name first, then an installed entry point, then ``package.module:factory``."""
    installed = plugins()
    if spec in BUILTIN:
        path, label = BUILTIN[spec], repr(spec)
    elif spec in installed:
        ep = installed[spec]
        path = f"{ep.module}:{ep.attr}"
        label = f"{spec!r} (entry point {path} of {_package(ep)})"
    else:
        path, label = spec, repr(spec)
    if ":" not in path:
        allowed = ", ".join([*BUILTIN, *installed])
        raise UserError(f"{where}: {spec!r} is not a task (allowed: {allowed}, or a dotted path package.module:factory)")
    module_name, _, attribute = path.partition(":")
    try:
        factory: Any = importlib.import_module(module_name)
    except Exception as err:  # a plugin's import can fail in any way
        raise UserError(f"{where}: {label}: cannot import module {module_name!r}: {reason(err)}") from None
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise UserError(f"{where}: {label}: module {module_name!r} has no attribute {attribute!r} (allowed: a callable task factory)")
        factory = getattr(factory, part)
    if not callable(factory):
        raise UserError(f"{where}: {label}: {attribute!r} is a {type(factory).__name__}, not callable (allowed: a callable task factory)")
    return factory


def load_task(spec: str, args: dict[str, Any] | None = None, where: str = "task") -> Task:
    """The task named ``spec``, built with ``args``; a clear :class:`UserError` naming ``where`` when it cannot be.

    ``spec`` is a built-in name (:data:`BUILTIN`), the name of an entry point
    in the group ``tuner.tasks``, or ``package.module:factory``, in that order.
    """
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
        for key, value in args.items():  # ``hidden: true`` or ``"1e-3"`` where the default is a number
            default = signature.parameters[key].default if key in signature.parameters else None
            if is_number(default) or isinstance(default, bool):
                check_type(f"{where}: {spec!r}: task_args.{key}", value, default)
    try:
        task = factory(**args)
    except Exception as err:  # a factory may reject its arguments in any way
        raise UserError(f"{where}: {spec!r}: the factory raised {reason(err)}") from None
    if not isinstance(task, Task):
        missing = [name for name in FIELDS if not hasattr(task, name)]
        raise UserError(f"{where}: {spec!r}: the factory returned {type(task).__name__}, which lacks {', '.join(missing)} (allowed: an object with the attributes of tuner.tasks.Task)")
    checks = {
        "name": (isinstance(task.name, str) and task.name != "", "a non-empty string"),
        "metric": (isinstance(task.metric, str) and task.metric != "", "a non-empty string"),
        "direction": (task.direction in ("minimize", "maximize"), "minimize, maximize"),
        "epochs": (is_int(task.epochs), "an integer >= 1"),
        "batch_size": (is_int(task.batch_size), "an integer >= 1"),
    }
    for key, (ok, allowed) in checks.items():
        if not ok:
            raise UserError(f"{where}: {spec!r}: {key} {getattr(task, key)!r} is not allowed ({allowed})")
    return task


class _Broken(Exception):
    """A task's data, model, loss or metric do not fit together; the message says how."""


def _call(what: str, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``, any exception becoming a :class:`_Broken` that says what was called."""
    try:
        return function(*args)
    except Exception as err:  # a task's code may fail in any way
        raise _Broken(f"{what} raised {reason(err)}") from None


def _check_data(data: Any) -> None:
    if not isinstance(data, Data):
        raise _Broken(f"data() returned {type(data).__name__} (allowed: tuner.tasks.Data)")
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        if not (isinstance(split, Split) and isinstance(split.x, torch.Tensor) and isinstance(split.y, torch.Tensor)):
            raise _Broken(f"data().{name} is not a tuner.tasks.Split of two tensors")
        if len(split.x) != len(split.y):
            raise _Broken(f"the {name} split has {len(split.x)} inputs but {len(split.y)} targets (allowed: as many of each)")
        if len(split.x) == 0:
            raise _Broken(f"the {name} split is empty")


def _check_step(task: Task, data: Data) -> None:
    """One forward pass, loss, backward pass and metric on a few training samples."""
    model = _call("model()", task.model)
    if not isinstance(model, torch.nn.Module):
        raise _Broken(f"model() returned {type(model).__name__} (allowed: a torch.nn.Module)")
    model = model.to(data.train.x.device)
    if not any(p.requires_grad for p in model.parameters()):
        raise _Broken("model() has no trainable parameters")
    x, y = data.train.x[:CHECK_BATCH], data.train.y[:CHECK_BATCH]
    output = _call(f"model(train inputs of shape {tuple(x.shape)})", model, x)
    if not isinstance(output, torch.Tensor) or output.dim() == 0 or len(output) != len(x):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise _Broken(f"model() returned {shape} for {len(x)} inputs (allowed: a tensor with the batch first)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns, rather than fails, when shapes broadcast by accident
        loss = _call(f"loss(outputs of shape {tuple(output.shape)}, targets of shape {tuple(y.shape)})", task.loss, output, y)
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
        raise _Broken(f"loss() returned {tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__} (allowed: a scalar tensor)")
    if not loss.requires_grad:
        raise _Broken("loss() does not depend on the model's parameters (no gradient to follow)")
    if not torch.isfinite(loss):
        raise _Broken(f"loss() is {loss.item()} at initialisation (allowed: a finite number)")
    _call("loss().backward()", loss.backward)
    score = _call("score()", task.score, output.detach(), y)
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise _Broken(f"score() returned {type(score).__name__} (allowed: a float, e.g. tensor.item())")
    if not math.isfinite(score):
        raise _Broken(f"score() is {score} at initialisation (allowed: a finite number)")


def load_data(task: Task, device: torch.device, where: str = "task") -> Data:
    """The task's data on ``device``, checked with one cheap training step of a fresh model.

    A task whose data, model, loss or metric do not fit together fails here
    with one line naming it and the problem, before any study exists, rather
    than in every trial. The data is moved to ``device`` once, here.
    """
    try:
        data = _call("data()", task.data)
        _check_data(data)
        data = data.to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            _check_step(task, data)
    except _Broken as err:
        raise UserError(f"{where}: {task.name!r} does not work: {err}") from None
    return data


@dataclass(frozen=True)
class TaskInfo:
    """A task for ``tuner tasks``: its name, where it comes from, and the first line of its docstring."""

    name: str
    origin: str
    summary: str


def describe() -> list[TaskInfo]:
    """The built-in tasks, then those of installed plugins (a plugin that cannot load says why)."""
    infos = [TaskInfo(name, "built-in", _summary(name)) for name in BUILTIN]
    for name, ep in plugins().items():
        origin = f"plugin: {ep.value} of {_package(ep)}"
        summary = "unused: the built-in task of the same name comes first" if name in BUILTIN else _summary(name)
        infos.append(TaskInfo(name, origin, summary))
    return infos


def _summary(name: str) -> str:
    try:
        factory = _factory(name, "task")
    except UserError as err:
        return f"cannot be loaded: {err}"
    return (inspect.getdoc(factory) or "").partition("\n")[0]
