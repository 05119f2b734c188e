"""Batches of a Dataset task: its DataLoaders, and how one batch reaches the model.

A task whose ``data()`` gives ``torch.utils.data.Dataset`` splits is read
through DataLoaders built by :func:`loader`, with the task's optional hooks:

- ``collate_fn(samples)``: turns a list of samples into a batch (default:
  torch's ``default_collate``);
- ``sampler(dataset, generator)``: the training split's ``Sampler``, drawing
  its randomness from ``generator`` (default: a shuffle from it);
- ``num_workers``: worker processes per DataLoader (default:
  :func:`default_workers`); an experiment's ``num_workers`` overrides it;
- ``unpack(batch)``: the pair ``(inputs, target)`` of a batch (default: the
  batch is that pair, e.g. ``(x, y)``).

The model is called as ``model(**inputs)`` when ``inputs`` is a dict,
``model(*inputs)`` when a tuple or list, else ``model(inputs)`` (see :func:`forward`).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from tuner.tasks.task import Task

# At most this many DataLoader workers by default: more rarely pay on a single GPU's input pipeline.
MAX_DEFAULT_WORKERS = 4


def default_workers(device: torch.device) -> int:
    """DataLoader workers when neither the task nor the experiment names a number: 0 when training on the CPU (the
    training threads already use every core, and workers would take them away), else one per core but one, at most
    :data:`MAX_DEFAULT_WORKERS`."""
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(MAX_DEFAULT_WORKERS, cores - 1))


def seed_worker(worker_id: int) -> None:
    """Seed Python's and NumPy's generators in a DataLoader worker from the seed torch gave it (torch's own
    generator is seeded by the DataLoader from its ``generator``), as torch's "Randomness in multi-process data
    loading" advises."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


@contextlib.contextmanager
def python_and_numpy_seeded(seed: int) -> Iterator[None]:
    """Python's and NumPy's global generators seeded with ``seed`` inside, restored after, so that a Dataset that
    draws from them in this process (no workers) repeats with the seed (``torch.random.fork_rng`` does this for
    torch's)."""
    states = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])


def loader(
    task: Task,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    seed: int,
    *,
    train: bool,
    workers: int | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` for training on ``device``.

    With ``train`` the samples come in an order drawn from a generator seeded
    with ``seed`` (the task's ``sampler`` with that generator, or a shuffle),
    a new order every epoch; else in order; with ``drop_last`` (default False)
    without the last partial batch. The same generator seeds the workers: a run
    is repeatable with or without them. ``workers`` (the experiment's
    ``num_workers``) defaults to the task's ``num_workers``, else
    :func:`default_workers`; they persist across epochs.
    On CUDA, batches are pinned (see :func:`to_device`).
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = task.sampler(dataset, generator) if train and hasattr(task, "sampler") else None
    if workers is None:
        workers = getattr(task, "num_workers", None)
        workers = default_workers(device) if workers is None else workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        drop_last=drop_last,
        shuffle=train and sampler is None,
        sampler=sampler,
        collate_fn=getattr(task, "collate_fn", None),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        worker_init_fn=seed_worker,
        generator=generator,
    )


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (also inside dicts, tuples and lists) on ``device``; non-blocking on CUDA,
    where the DataLoader pinned them."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=device.type == "cuda")
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        items = [to_device(item, device) for item in value]
        return (
            type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
        )  # a namedtuple takes its fields apart
    return value


def unpack(task: Task, batch: Any) -> tuple[Any, Any]:
    """The model's inputs and the loss's target in ``batch``: the task's ``unpack(batch)``, else the batch itself as
    a pair. Raises ``ValueError`` for a batch that is not a pair and a task without ``unpack``."""
    if hasattr(task, "unpack"):
        return task.unpack(batch)
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        kind = f"a {type(batch).__name__}" + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        raise ValueError(
            f"a batch is {kind}, not a pair (inputs, target): give the task unpack(batch) -> (inputs, target)"
        )
    inputs, target = batch
    return inputs, target


def on_device(task: Task, batch: Any, device: torch.device) -> tuple[Any, Any]:
    """A DataLoader's ``batch`` as ``(inputs, target)`` on ``device``."""
    return unpack(task, to_device(batch, device))


def forward(model: torch.nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a dict, ``model(*inputs)`` for a tuple or list, else ``model(inputs)``."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)
