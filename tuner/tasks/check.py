"""The one cheap training step that checks a task before any study exists (:func:`load_data`).

A task whose data, model, loss or metric do not fit together fails here with
one line naming it and the problem, rather than in every trial;
:mod:`tuner.tasks.contract` checks it further, for tests.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

from tuner.errors import UserError, reason
from tuner.plural import counted
from tuner.tasks import batches
from tuner.tasks.task import Data, Split, Task, is_loop
from tuner.train.loop import LOOP_CHECK_LR, check_loop

# Samples in the one cheap training step that checks a task before any study exists.
CHECK_BATCH = 8


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
        raise _Broken(f"data() returned {type(data).__name__} (allowed: tuner.tasks.task.Data)")
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        if isinstance(split, Dataset):
            _check_dataset(name, split)
            continue
        if not (isinstance(split, Split) and isinstance(split.x, torch.Tensor) and isinstance(split.y, torch.Tensor)):
            raise _Broken(
                f"data().{name} is not a tuner.tasks.task.Split of two tensors (allowed: three Splits, or three "
                "Datasets)"
            )
        if len(split.x) != len(split.y):
            raise _Broken(
                f"the {name} split has {counted(len(split.x), 'input')} but {counted(len(split.y), 'target')} "
                "(allowed: as many of each)"
            )
        if len(split.x) == 0:
            raise _Broken(f"the {name} split is empty")
    if len({isinstance(split, Split) for split in (data.train, data.val, data.test)}) > 1:
        raise _Broken("data() mixes Splits and Datasets (allowed: three Splits, or three Datasets)")


def _check_dataset(name: str, split: Any) -> None:
    if isinstance(split, IterableDataset) or not hasattr(split, "__len__"):
        raise _Broken(
            f"data().{name} is a {type(split).__name__} without __len__ (allowed: a map-style torch Dataset with "
            "__len__)"
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
    tensors, datasets = data.tensors(), data.datasets()
    if tensors is not None:
        x = tensors[0].x[:CHECK_BATCH]
        return x, tensors[0].y[:CHECK_BATCH], f"train inputs of shape {tuple(x.shape)}"
    assert datasets is not None, "_check_data let through three Splits or three Datasets"
    train = batches.loader(task, datasets[0], CHECK_BATCH, data.device, seed=0, train=True, workers=0)
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
        raise _Broken(
            f"model() returned {shape} for {counted(len(y), 'input')} (allowed: a tensor with the batch first)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns, rather than fails, when shapes broadcast by accident
        loss = _call(
            f"loss(outputs of shape {tuple(output.shape)}, targets of shape {tuple(y.shape)})", task.loss, output, y
        )
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
        raise _Broken(
            f"loss() returned {tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__} "
            "(allowed: a scalar tensor)"
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


def load_data(task: Task, device: torch.device, where: str = "task", workers: int | None = None) -> Data:
    """The task's data on ``device``, checked with one cheap training step of a fresh model.

    A task whose data, model, loss or metric do not fit together fails here
    with one line naming it and the problem (a :class:`UserError` naming
    ``where``), before any study exists, rather than in every trial. In-memory
    data is moved to ``device`` once, here; Datasets stay where they are, and
    their batches move as they are read, with ``workers`` DataLoader worker
    processes (the experiment's ``num_workers``; default None: the task's
    ``num_workers``, else :func:`tuner.tasks.batches.default_workers`).
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
    return dataclasses.replace(data, workers=workers)


def _check_loop(task: Any, device: torch.device, where: str) -> Data:
    """Run a loop task's ``fit`` for one epoch; a :class:`UserError` naming ``where`` if it raises or breaks a rule.
    Its data are its own: the :class:`Data` returned has only the device."""
    try:
        _call(f"fit(run) (one epoch of Adam, lr={LOOP_CHECK_LR})", check_loop, task, device)
    except _Broken as err:
        raise UserError(f"{where}: {task.name!r} does not work: {err}") from None
    return Data(None, None, None).to(device)
