"""The effective per-parameter learning rate of an optimizer, measured during training.

For each optimizer family, torch's update (``torch/optim/{sgd,adam,adamw,rmsprop}.py``,
the single-tensor code paths, torch 2.x) is written as ``Δθ = −η ⊙ d``: ``d`` is
the family's gradient-free direction and ``η`` the per-parameter learning rate
that multiplies it. ``η`` is what this module records:

============= ======================================= ==========================================
family        direction ``d``                         effective learning rate ``η``
============= ======================================= ==========================================
SGD           the gradient (or momentum buffer,        ``lr_t`` for every parameter
              or Nesterov's ``g + μ·buf``)
Adam, AdamW   ``m_t`` (first moment, not corrected)    ``lr_t / (1−β1^t) / (sqrt(v_t)/sqrt(1−β2^t) + ε)``
              ``v_t``: ``max_exp_avg_sq`` with amsgrad   ``= lr_t·sqrt(1−β2^t) / (1−β1^t)``
                                                         ``/ (sqrt(v_t) + ε·sqrt(1−β2^t))``
RMSprop       the gradient (momentum 0), else the       ``lr_t / (sqrt(v_t) + ε)``; centered:
              buffer of ``g / (sqrt(v)+ε)``             ``lr_t / (sqrt(v_t − ḡ_t²) + ε)``
============= ======================================= ==========================================

``lr_t`` is the scheduled learning rate of the step and ``t`` the optimizer's step
count after it. Elements with ``v_t = 0`` (no non-zero gradient yet: a constant input
pixel, an embedding row never looked up) have ``η = lr/ε`` but move nothing: they are left out. Adam's ``m_t``
sums the gradients with weights that add up to
``1−β1^t``, so ``η`` is directly comparable to SGD's ``lr_t`` (a constant gradient
moves both by ``η·g``). Weight decay, folded into the gradient by Adam, SGD and
RMSprop and applied to ``θ`` beside the step by AdamW, is not part of ``η``.

Beside ``η``, the realised ratio ``|Δθ| / |g|`` per element (``g`` the gradient
the step read; elements with ``g = 0`` left out), which includes momentum and
weight decay. Both are reduced on the device to their 5, 25, 50, 75 and 95th
percentiles per parameter tensor, at a bounded number of steps
(:class:`StepSizes`), and copied to the host once, at the end of training.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tuner.config.experiment import Config
from tuner.tasks.task import Data, Task, is_loop
from tuner.train.trainer import Batches

PERCENTILES = (5, 25, 50, 75, 95)
# Percentiles of a tensor with more elements are those of this many, drawn at random once per run (fixed seed):
# a sort of every element at every recorded step would cost more than the training (CPU: ~0.4 µs an element here),
# and 1,024 draws put the 5th percentile within about ±0.7 percentile points.
SAMPLE = 1024
# A record's sampled values wait, on the device, until this many (float64: 32 MiB) are there or the run ends: their
# percentiles are then computed together, in a dozen operations for all of them instead of a dozen a record.
PENDING = 2**22
# Adam's bias correction weighs most at the first steps: every one of these is recorded.
FIRST_STEPS = 5
# The families with an η defined here (subclasses included).
FAMILIES = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop)


def effective_lr(
    optimizer: torch.optim.Optimizer,
    param: torch.Tensor,
    group: dict[str, Any],
    lr: float,
    index: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """``η`` of ``param`` after ``optimizer`` stepped with learning rate ``lr``: shape of ``param``, or of ``index``
    (flat positions in ``param``) when given, or (1,) for SGD (one value for every element); None for a family without a
    definition here (see the module's table) or a parameter the step skipped (no state yet).

    With ``index`` only those elements are computed (the same values, element for element, as indexing the whole)."""
    state = optimizer.state.get(param) or {}
    if not (isinstance(optimizer, torch.optim.SGD) or "step" in state):
        return None
    return _rate(
        optimizer, group, lr, float(state.get("step", 0)), lambda key: _sampled(state[key], index), param.device
    )


def _rate(
    optimizer: torch.optim.Optimizer,
    group: dict[str, Any],
    lr: float,
    step: float,
    read: Callable[[str], torch.Tensor],
    device: torch.device,
) -> torch.Tensor | None:
    """``η`` (see :func:`effective_lr`) from the optimizer's state tensors as ``read(name)`` gives them, ``step`` the
    state's step count (unused by SGD)."""
    if isinstance(optimizer, torch.optim.SGD):  # one value, the same for every element
        return torch.full((1,), lr, dtype=torch.float64, device=device)
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        beta1, beta2 = group["betas"]
        v = read("max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq")
        return _unseen(v, lr / (1 - beta1**step) / (v.sqrt() / (1 - beta2**step) ** 0.5 + group["eps"]))
    if isinstance(optimizer, torch.optim.RMSprop):
        v = read("square_avg")
        centered = v - read("grad_avg") ** 2 if group["centered"] else v
        return _unseen(v, lr / (centered.sqrt() + group["eps"]))
    return None


def _sampled(values: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """``values`` detached, as it is (``index`` None) or flattened and taken at ``index``."""
    return values.detach() if index is None else values.detach().reshape(-1).take(index)


def _concat(tensors: list[torch.Tensor], index: list[torch.Tensor | None]) -> torch.Tensor:
    """The sampled elements (:func:`_sampled`) of ``tensors``, one after the other, in one new tensor."""
    return torch.cat([_sampled(t, i).reshape(-1) for t, i in zip(tensors, index)])


def _state(states: list[dict[str, Any]], index: list[torch.Tensor | None], key: str) -> torch.Tensor:
    """The sampled elements of the optimizer state ``key`` of the tensors whose ``states`` are given, concatenated."""
    return _concat([state[key] for state in states], index)


def _unseen(v: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    # An element that never had a non-zero gradient has v = 0 and η = lr/ε, a rate that moves nothing: left out (NaN).
    return eta.where(v != 0, torch.nan)


def percentiles(rows: torch.Tensor) -> torch.Tensor:
    """The :data:`PERCENTILES` of each row of ``rows`` (shape (n, k); NaNs ignored; an all-NaN row gives NaNs), shape
    (n, 5).

    The same values as ``torch.nanquantile(rows, q, dim=1).T`` (linear interpolation). On the CPU the rows are sorted
    by numpy, ten times faster than torch's CPU sort here (2 ms against 0.2 ms for 8 × 1,024), on other devices by
    torch.
    """
    ordered = torch.from_numpy(np.sort(rows.numpy(), axis=1)) if rows.device.type == "cpu" else rows.sort(dim=1).values
    count = (~rows.isnan()).sum(dim=1, keepdim=True)  # NaNs sort last
    position = (count - 1).clamp(min=0) * torch.tensor(PERCENTILES, dtype=rows.dtype, device=rows.device) / 100
    low = position.floor().long()
    high = (low + 1).minimum((count - 1).clamp(min=0))
    below, above = ordered.gather(1, low), ordered.gather(1, high)
    value = torch.lerp(below, above, position - low)
    return value.where(count > 0, torch.nan)


def recorded_steps(steps_per_epoch: int, epochs: int, per_epoch: int) -> set[int]:
    """The 1-based optimizer steps a :class:`StepSizes` records: the first :data:`FIRST_STEPS`, then ``per_epoch``
    evenly spaced steps in every epoch, its last step one of them (fewer if the epoch has fewer steps). Raises
    ValueError if ``per_epoch`` < 1."""
    if per_epoch < 1:
        raise ValueError(f"per_epoch: {per_epoch} is not allowed (>= 1)")
    positions = {
        max(1, round(steps_per_epoch * k / per_epoch)) for k in range(1, per_epoch + 1)
    }  # within an epoch, 1-based
    total = steps_per_epoch * epochs
    return {s for s in range(1, total + 1) if s <= FIRST_STEPS or (s - 1) % steps_per_epoch + 1 in positions}


@dataclass
class _Pending:
    step: int
    lrs: list[float]  # per parameter group, as scheduled for this step
    # Per dtype: the tensors with a gradient (their places in the model), their sampled elements and gradients
    # concatenated. Each concatenation is computed on at once: one operation for all tensors instead of one for each.
    parts: list[tuple[tuple[int, ...], torch.Tensor, torch.Tensor]]


# Where a record's values go: per piece, the kind (0: η, 1: |Δθ|/|g|) and the tensors, in the order of its values.
Layout = tuple[tuple[int, tuple[int, ...]], ...]


class StepSizes:
    """A per-step hook for :func:`tuner.train.trainer.train`: records ``η`` and ``|Δθ|/|g|`` at :func:`recorded_steps`.

    Called before each optimizer step with the model and optimizer (the same model every step: its parameters are
    listed once), it returns a function to call after the step at a recorded step (None otherwise). :meth:`result`
    is the record, JSON-safe (see there).
    """

    def __init__(self, steps_per_epoch: int, epochs: int, per_epoch: int = 1) -> None:
        self.epochs, self.per_epoch = epochs, per_epoch
        self.steps = recorded_steps(steps_per_epoch, epochs, per_epoch)
        self.step = 0
        self.params: list[torch.Tensor] = []
        self.names: list[str] = []
        self.numel: list[int] = []
        self.lrs: list[float] = []
        self.recorded: list[int] = []
        self.index: list[torch.Tensor | None] = []  # per tensor, the elements sampled (None: all)
        self.layouts: dict[Layout, torch.Tensor] = {}  # where a layout's values go in (tensors, 2, SAMPLE), flattened
        self.rows: list[torch.Tensor] = []  # per recorded step: (tensors, 2, 5) = η and |Δθ|/|g| percentiles
        self.waiting: list[tuple[Layout, torch.Tensor]] = []  # per recorded step not reduced yet: its values
        self.defined = False
        self.optimizer = ""

    def __call__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[], None] | None:
        self.step += 1
        if self.step not in self.steps:
            return None
        if not self.names:
            self._start(model)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for k, param in enumerate(self.params):
            if param.grad is not None:  # a tensor no gradient reached: the step leaves it alone (NaNs)
                by_dtype.setdefault(param.dtype, []).append(k)
        parts = []
        for ks in by_dtype.values():
            index = [self.index[k] for k in ks]
            grads = [grad for k in ks if (grad := self.params[k].grad) is not None]  # all of them: ks have one
            parts.append((tuple(ks), _concat([self.params[k] for k in ks], index), _concat(grads, index)))
        pending = _Pending(self.step, [g["lr"] for g in optimizer.param_groups], parts)
        return lambda: self._after(optimizer, pending)

    def plan(self, steps_per_epoch: int) -> None:
        """Record at the :func:`recorded_steps` of ``steps_per_epoch``: what a task with its own loop tells
        ``run.build`` (:mod:`tuner.train.loop`), known only once its ``fit`` runs."""
        self.steps = recorded_steps(steps_per_epoch, self.epochs, self.per_epoch)

    def _start(self, model: torch.nn.Module) -> None:
        named = list(model.named_parameters())
        self.params, self.names, self.numel = (
            [p for _, p in named],
            [n for n, _ in named],
            [p.numel() for _, p in named],
        )
        generator = torch.Generator(device=named[0][1].device).manual_seed(0) if named else None
        self.index = [
            None if p.numel() <= SAMPLE else torch.randint(p.numel(), (SAMPLE,), generator=generator, device=p.device)
            for p in self.params
        ]

    def _after(self, optimizer: torch.optim.Optimizer, pending: _Pending) -> None:
        self.defined, self.optimizer = isinstance(optimizer, FAMILIES), type(optimizer).__name__
        params = self.params
        place = {id(p): (group, lr) for group, lr in zip(optimizer.param_groups, pending.lrs) for p in group["params"]}
        layout: list[tuple[int, tuple[int, ...]]] = []
        values = []  # only the sampled elements are computed, and no value is copied to the host
        rates: dict[tuple[int, float, torch.dtype], list[int]] = {}  # tensors that share a group, a step and a dtype
        for ks, before, grads in pending.parts:
            moved = (_concat([params[k] for k in ks], [self.index[k] for k in ks]) - before).abs()
            values.append(moved / grads.abs().where(grads != 0, torch.nan))
            layout.append((1, ks))
            for k in ks:
                state = optimizer.state.get(params[k]) or {}
                if isinstance(optimizer, torch.optim.SGD) or "step" in state:  # else the step skipped it: NaNs
                    key = (id(place[id(params[k])][0]), float(state.get("step", 0)), params[k].dtype)
                    rates.setdefault(key, []).append(k)
        for (_, step, _), members in rates.items():
            group, lr = place[id(params[members[0]])]
            states = [optimizer.state[params[k]] for k in members]
            index = [self.index[k] for k in members]
            eta = _rate(optimizer, group, lr, step, functools.partial(_state, states, index), params[0].device)
            if eta is not None:  # SGD's one value stands for every element
                values.append(eta.expand(sum(min(self.numel[k], SAMPLE) for k in members)))
                layout.append((0, tuple(members)))
        self.waiting.append((tuple(layout), torch.cat(values)))
        if len(self.waiting) * self.waiting[-1][1].numel() >= PENDING:
            self._reduce()
        self.recorded.append(pending.step)
        self.lrs.append(pending.lrs[0])

    def _reduce(self) -> None:
        """The percentiles of the records waiting, appended to :attr:`rows` in their order; records of one layout
        (usually all) together."""
        for layout, records in itertools.groupby(self.waiting, key=lambda record: record[0]):
            stacked = torch.stack([v for _, v in records])
            rows = torch.full(
                (len(stacked), len(self.params) * 2 * SAMPLE), torch.nan, dtype=torch.float64, device=stacked.device
            )
            rows[:, self._slots(layout)] = stacked.double()
            reduced = percentiles(rows.reshape(-1, SAMPLE)).reshape(len(stacked), len(self.params), 2, -1)
            self.rows.extend(reduced.unbind())
        self.waiting = []

    def _slots(self, layout: Layout) -> torch.Tensor:
        """Where the values of a record of ``layout`` go in its (tensors, η | ratio, SAMPLE) rows, flattened."""
        if layout not in self.layouts:
            device = self.params[0].device
            self.layouts[layout] = torch.cat(
                [
                    (2 * k + kind) * SAMPLE + torch.arange(min(self.numel[k], SAMPLE), device=device)
                    for kind, ks in layout
                    for k in ks
                ]
            )
        return self.layouts[layout]

    def result(self) -> dict[str, Any]:
        """The record: ``percentiles`` (:data:`PERCENTILES`), ``steps`` (1-based optimizer steps), ``lr`` (scheduled,
        first group), ``tensors`` (parameter names), ``numel`` (their sizes), ``effective_lr`` and ``ratio``: per
        tensor, per step, the :data:`PERCENTILES` (NaN where not defined); ``optimizer``: its class name; ``defined``:
        whether the optimizer's family has an ``η`` here. One host copy."""
        self._reduce()
        stacked = torch.stack(self.rows).cpu() if self.rows else torch.empty(0, len(self.names), 2, len(PERCENTILES))
        per_tensor = stacked.permute(1, 2, 0, 3).tolist()  # tensor, kind, step, percentile
        return {
            "percentiles": list(PERCENTILES),
            "steps": self.recorded,
            "lr": self.lrs,
            "tensors": self.names,
            "numel": self.numel,
            "effective_lr": {name: rows[0] for name, rows in zip(self.names, per_tensor)},
            "ratio": {name: rows[1] for name, rows in zip(self.names, per_tensor)},
            "optimizer": self.optimizer,
            "defined": self.defined,
        }


@dataclass(frozen=True)
class Series:
    """One parameter tensor's recorded percentiles of ``η`` against optimizer ``steps``: ``low``, ``median``, ``high``
    are the 5th, 50th and 95th."""

    tensor: str
    numel: int
    steps: list[int]
    low: list[float]
    median: list[float]
    high: list[float]


def largest(record: dict[str, Any], count: int) -> list[Series]:
    """The ``count`` largest parameter tensors of a :meth:`StepSizes.result` record as :class:`Series` (model order)."""
    order = sorted(range(len(record["tensors"])), key=lambda i: -record["numel"][i])[:count]
    where = [record["percentiles"].index(q) for q in (5, 50, 95)]
    out = []
    for i in sorted(order):
        name = record["tensors"][i]
        rows = record["effective_lr"][name]
        out.append(Series(name, record["numel"][i], record["steps"], *([row[j] for row in rows] for j in where)))
    return out


def probe(task: Task, data: Data, config: Config) -> StepSizes:
    """A :class:`StepSizes` for one training run of ``config`` on ``task``'s ``data``: its steps per epoch as the
    trainer counts them; for a task with its own loop, as its ``fit`` tells ``run.build`` (:meth:`StepSizes.plan`)."""
    steps = 1 if is_loop(task) else Batches(task, data, config.batch_size, config.seed).steps
    return StepSizes(steps, config.epochs)
