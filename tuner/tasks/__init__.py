"""Tasks: the PyTorch problems that studies tune optimizers on.

A task is any object with the attributes of :class:`Task` (its data in-memory
tensors or torch Datasets, see :mod:`tuner.tasks.batches`), or one that brings
its own training loop (``fit``, see :mod:`tuner.train.loop`). It is named by a
built-in name (``digits-mlp``, see :data:`BUILTIN`), the name of an entry
point in the group ``tuner.tasks`` of an installed package, or a dotted path
``package.module:factory``, tried in that order; ``task_args`` from the
experiment become the factory's keyword arguments. :func:`load_data` checks a
task with one training step before any study; :mod:`tuner.tasks.contract`
checks it further, for tests.
"""

from __future__ import annotations

import dataclasses
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
from torch.utils.data import Dataset, IterableDataset

from tuner.config.checks import check_type, is_int, is_number
from tuner.errors import UserError, reason
from tuner.tasks import batches


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
    """Train, validation and test splits: three in-memory :class:`Split` objects, or three map-style
    ``torch.utils.data.Dataset`` objects read through DataLoaders (see :mod:`tuner.tasks.batches`).

    ``device`` is where training runs: :meth:`to` sets it, and moves in-memory splits there.
    """

    train: Split | Dataset | None  # None: a task with its own training loop (tuner.train.loop) keeps its data
    val: Split | Dataset | None
    test: Split | Dataset | None
    device: torch.device = torch.device("cpu")  # noqa: RUF009 (a torch.device is immutable)

    @property
    def in_memory(self) -> bool:
        """Whether the splits are tensors (sliced on the device) rather than Datasets (read through DataLoaders)."""
        return isinstance(self.train, Split)

    def to(self, device: torch.device | str) -> Data:
        if not self.in_memory:
            return dataclasses.replace(self, device=_indexed(torch.device(device)))
        train = self.train.to(device)
        return Data(train, self.val.to(device), self.test.to(device), train.x.device)


def _indexed(device: torch.device) -> torch.device:
    """``device`` with its index (``cuda`` -> ``cuda:0``), as a tensor moved there reports it."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


@runtime_checkable
class Task(Protocol):
    """What the trainer needs from a task.

    ``metric`` names what :meth:`score` returns (``"accuracy"``), ``direction``
    says whether it is better high (``"maximize"``) or low (``"minimize"``).
    ``batch_size`` is used when the experiment gives none; ``epochs`` is the
    task's suggested training length (experiments always state theirs).

    A task whose data are Datasets may also have ``collate_fn``, ``sampler``,
    ``num_workers`` and ``unpack`` (see :mod:`tuner.tasks.batches`).
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
# The attributes of a Task, and of a task with its own training loop (see tuner.train.loop).
FIELDS = ("name", "metric", "direction", "epochs", "batch_size", "data", "model", "loss", "score")
LOOP_FIELDS = ("name", "metric", "direction", "epochs", "batch_size", "fit")
# The learning rate of Adam in the one epoch of a loop task's fit that checks it before any study.
LOOP_CHECK_LR = 1e-3


def is_loop(task: Any) -> bool:
    """Whether ``task`` brings its own training loop (a ``fit(run)`` method, see :mod:`tuner.train.loop`) rather than
    ``data``, ``model``, ``loss`` and ``score``."""
    return callable(getattr(task, "fit", None))


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
        raise UserError(
            f"{where}: {spec!r} is not a task (allowed: {allowed}, or a dotted path package.module:factory)"
        )
    module_name, _, attribute = path.partition(":")
    try:
        factory: Any = importlib.import_module(module_name)
    except Exception as err:  # a plugin's import can fail in any way
        raise UserError(f"{where}: {label}: cannot import module {module_name!r}: {reason(err)}") from None
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise UserError(
                f"{where}: {label}: module {module_name!r} has no attribute {attribute!r} (allowed: a callable task factory)"
            )
        factory = getattr(factory, part)
    if not callable(factory):
        raise UserError(
            f"{where}: {label}: {attribute!r} is a {type(factory).__name__}, not callable (allowed: a callable task factory)"
        )
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
        accepted = [
            p.name for p in signature.parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            for key in args:
                if key not in accepted:
                    raise UserError(
                        f"{where}: {spec!r}: task_args: unknown argument {key!r} (allowed: {', '.join(accepted) or 'none'})"
                    )
        for key, value in args.items():  # ``hidden: true`` or ``"1e-3"`` where the default is a number
            default = signature.parameters[key].default if key in signature.parameters else None
            if is_number(default) or isinstance(default, bool):
                check_type(f"{where}: {spec!r}: task_args.{key}", value, default)
    try:
        task = factory(**args)
    except Exception as err:  # a factory may reject its arguments in any way
        raise UserError(f"{where}: {spec!r}: the factory raised {reason(err)}") from None
    if not (isinstance(task, Task) or (is_loop(task) and all(hasattr(task, name) for name in LOOP_FIELDS))):
        missing = [name for name in (LOOP_FIELDS if is_loop(task) else FIELDS) if not hasattr(task, name)]
        raise UserError(
            f"{where}: {spec!r}: the factory returned {type(task).__name__}, which lacks {', '.join(missing)} (allowed: an object with the attributes of tuner.tasks.Task, or with fit(run) instead of data, model, loss and score: see tuner.train.loop)"
        )
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
        if isinstance(split, Dataset):
            _check_dataset(name, split)
            continue
        if not (isinstance(split, Split) and isinstance(split.x, torch.Tensor) and isinstance(split.y, torch.Tensor)):
            raise _Broken(
                f"data().{name} is not a tuner.tasks.Split of two tensors (allowed: three Splits, or three Datasets)"
            )
        if len(split.x) != len(split.y):
            raise _Broken(
                f"the {name} split has {len(split.x)} inputs but {len(split.y)} targets (allowed: as many of each)"
            )
        if len(split.x) == 0:
            raise _Broken(f"the {name} split is empty")
    if len({isinstance(split, Split) for split in (data.train, data.val, data.test)}) > 1:
        raise _Broken("data() mixes Splits and Datasets (allowed: three Splits, or three Datasets)")


def _check_dataset(name: str, split: Any) -> None:
    if isinstance(split, IterableDataset) or not hasattr(split, "__len__"):
        raise _Broken(
            f"data().{name} is a {type(split).__name__} without __len__ (allowed: a map-style torch Dataset with __len__)"
        )
    if _call(f"len(data().{name})", len, split) == 0:
        raise _Broken(f"the {name} split is an empty Dataset")


def _shapes(value: Any) -> Any:
    """The shapes of the tensors in ``value`` (a tensor, dict, tuple or list), for messages."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, dict):
        return {key: _shapes(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(_shapes(item) for item in value)
    return type(value).__name__


def _first_batch(task: Task, data: Data) -> tuple[Any, torch.Tensor, str]:
    """A few training samples on the device as ``(inputs, target)``, and how a message names the inputs.

    Datasets are read as training reads them (the task's sampler, collate_fn and unpack), in this process.
    """
    if data.in_memory:
        x = data.train.x[:CHECK_BATCH]
        return x, data.train.y[:CHECK_BATCH], f"train inputs of shape {tuple(x.shape)}"
    train = batches.loader(task, data.train, CHECK_BATCH, data.device, seed=0, train=True, workers=0)
    batch = _call(
        "reading the first training batch (the task's Dataset, sampler and collate_fn)", lambda: next(iter(train), None)
    )
    if batch is None:
        raise _Broken(
            "the training DataLoader yields no batch (allowed: a sampler and Dataset that give at least one sample)"
        )
    inputs, target = _call(
        "unpack(batch)" if hasattr(task, "unpack") else "taking (inputs, target) from a batch",
        batches.on_device,
        task,
        batch,
        data.device,
    )
    if not isinstance(target, torch.Tensor) or target.dim() == 0:
        raise _Broken(f"a batch's target is {_shapes(target)} (allowed: a tensor with the batch first)")
    return inputs, target, f"a training batch's inputs {_shapes(inputs)}"


def _check_step(task: Task, data: Data) -> None:
    """One forward pass, loss, backward pass and metric on a few training samples."""
    model = _call("model()", task.model)
    if not isinstance(model, torch.nn.Module):
        raise _Broken(f"model() returned {type(model).__name__} (allowed: a torch.nn.Module)")
    model = model.to(data.device)
    if not any(p.requires_grad for p in model.parameters()):
        raise _Broken("model() has no trainable parameters")
    x, y, inputs = _first_batch(task, data)
    output = _call(f"model({inputs})", batches.forward, model, x)
    if not isinstance(output, torch.Tensor) or output.dim() == 0 or len(output) != len(y):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise _Broken(f"model() returned {shape} for {len(y)} inputs (allowed: a tensor with the batch first)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns, rather than fails, when shapes broadcast by accident
        loss = _call(
            f"loss(outputs of shape {tuple(output.shape)}, targets of shape {tuple(y.shape)})", task.loss, output, y
        )
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
        raise _Broken(
            f"loss() returned {tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__} (allowed: a scalar tensor)"
        )
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
    than in every trial. In-memory data is moved to ``device`` once, here;
    Datasets stay where they are, and their batches move as they are read.
    """
    if is_loop(task):
        return _check_loop(task, device, where)
    try:
        data = _call("data()", task.data)
        _check_data(data)
        data = data.to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            _check_step(task, data)
    except _Broken as err:
        raise UserError(f"{where}: {task.name!r} does not work: {err}") from None
    return data


def _check_loop(task: Any, device: torch.device, where: str) -> Data:
    """Run a loop task's ``fit`` for one epoch; a :class:`UserError` naming ``where`` if it raises or breaks a rule.
    Its data are its own: the :class:`Data` returned has only the device."""
    from tuner.train.loop import check_loop  # tuner.train.loop builds on the trainer, which builds on this module

    try:
        _call(f"fit(run) (one epoch of Adam, lr={LOOP_CHECK_LR})", check_loop, task, device)
    except _Broken as err:
        raise UserError(f"{where}: {task.name!r} does not work: {err}") from None
    return Data(None, None, None, _indexed(device))


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
