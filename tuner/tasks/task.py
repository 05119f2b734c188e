"""What a task is: the :class:`Task` protocol, its :class:`Data` of three splits, and helpers for writing one.

A task is any object with the attributes of :class:`Task` (its data in-memory
tensors or torch Datasets, see :mod:`tuner.tasks.batches`), or one that brings
its own training loop (``fit``, see :mod:`tuner.train.loop`). Tasks are found
by name in :mod:`tuner.tasks.loading` and checked in :mod:`tuner.tasks.check`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

# The attributes of a Task, and of a task with its own training loop (see tuner.train.loop).
FIELDS = ("name", "metric", "direction", "epochs", "batch_size", "data", "model", "loss", "score")
LOOP_FIELDS = ("name", "metric", "direction", "epochs", "batch_size", "fit")


@dataclass(frozen=True)
class Split:
    """Inputs ``x`` (N, ...) and targets ``y`` (N, ...) of one split of N samples, indexed along the first dimension."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device | str) -> Split:
        """Both tensors on ``device`` (the same objects if already there)."""
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Data:
    """Train, validation and test splits: three in-memory :class:`Split` objects, or three map-style
    ``torch.utils.data.Dataset`` objects read through DataLoaders (see :mod:`tuner.tasks.batches`).

    ``device`` is where training runs: :meth:`to` sets it, and moves in-memory splits there. ``workers`` is the
    number of DataLoader worker processes for Dataset splits (default None: see :func:`tuner.tasks.batches.loader`).
    """

    train: Split | Dataset | None  # None: a task with its own training loop (tuner.train.loop) keeps its data
    val: Split | Dataset | None
    test: Split | Dataset | None
    device: torch.device = torch.device("cpu")  # noqa: RUF009 (a torch.device is immutable)
    # DataLoader worker processes of Dataset splits: the experiment's num_workers; None: the task's, else a default.
    workers: int | None = None

    @property
    def in_memory(self) -> bool:
        """Whether the splits are tensors (sliced on the device) rather than Datasets (read through DataLoaders)."""
        return isinstance(self.train, Split)

    def tensors(self) -> tuple[Split, Split, Split] | None:
        """``(train, val, test)`` when the splits are in-memory :class:`Split` objects, else None."""
        train, val, test = self.train, self.val, self.test
        if isinstance(train, Split) and isinstance(val, Split) and isinstance(test, Split):
            return train, val, test
        return None

    def datasets(self) -> tuple[Dataset, Dataset, Dataset] | None:
        """``(train, val, test)`` when the splits are Datasets, else None (in-memory, or a loop task's none)."""
        train, val, test = self.train, self.val, self.test
        if isinstance(train, Dataset) and isinstance(val, Dataset) and isinstance(test, Dataset):
            return train, val, test
        return None

    def to(self, device: torch.device | str) -> Data:
        """This data with ``device`` set to ``device`` (with its index, ``cuda`` -> ``cuda:0``), in-memory splits
        moved there; Datasets stay where they are (their batches move as they are read)."""
        tensors = self.tensors()
        if tensors is None:
            return dataclasses.replace(self, device=_indexed(torch.device(device)))
        train, val, test = (split.to(device) for split in tensors)
        return Data(train, val, test, train.x.device, self.workers)


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
        """The loss of a batch (training) or a whole split (evaluation): a scalar tensor, differentiable in the model's
        parameters. ``output`` and ``target`` have the batch first."""

    def score(self, output: torch.Tensor, target: torch.Tensor) -> float:
        """The metric over a whole split (outputs and targets of all its batches joined along the first dimension)."""


class Classifier:
    """Cross-entropy loss and accuracy over the last dimension of the output (the classes).

    For one label per sample (output ``(N, C)``, target ``(N,)``) or one per
    token (output ``(N, L, C)``, target ``(N, L)``): accuracy is then per token.
    """

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over samples (or tokens) of logits ``output`` against class indices ``target``."""
        return F.cross_entropy(output.flatten(0, -2), target.flatten())

    def score(self, output: torch.Tensor, target: torch.Tensor) -> float:
        """Accuracy in [0, 1]: the share of samples (or tokens) whose largest logit is the target class."""
        return (output.argmax(-1) == target).float().mean().item()


def generated(sample: Callable[[int, torch.Generator], Split], sizes: tuple[int, int, int], seed: int) -> Data:
    """Train, validation and test splits of ``sizes`` samples, drawn in that order by ``sample(n, generator)``.

    The generator is seeded with ``seed``, a constant of the task, not the
    trial's seed: every trial and every call sees the same data.
    """
    generator = torch.Generator().manual_seed(seed)
    train, val, test = (sample(n, generator) for n in sizes)
    return Data(train, val, test)


def is_loop(task: Any) -> bool:
    """Whether ``task`` brings its own training loop (a ``fit(run)`` method, see :mod:`tuner.train.loop`) rather than
    ``data``, ``model``, ``loss`` and ``score``."""
    return callable(getattr(task, "fit", None))
