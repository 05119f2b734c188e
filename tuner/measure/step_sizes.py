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

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
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
# Records wait, on the device, until their sampled values number this many (float32: 16 MiB) or the run ends: η,
# |Δθ|/|g| and the percentiles are then computed for all of them at once, in a dozen operations instead of a dozen a
# record.
PENDING = 2**22
# Adam's bias correction weighs most at the first steps: every one of these is recorded.
FIRST_STEPS = 5
# The families with an η defined here (subclasses included).
FAMILIES = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop)


def _family(optimizer: torch.optim.Optimizer) -> str | None:
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return "adam"
    return "rmsprop" if isinstance(optimizer, torch.optim.RMSprop) else None


def _keys(family: str | None, group: dict[str, Any]) -> tuple[str | None, ...]:
    """The state tensors ``η`` reads (module table); None: RMSprop's ``ḡ`` when not centered (read as zeros)."""
    if family == "adam":
        return ("max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq",)
    return ("square_avg", "grad_avg" if group["centered"] else None) if family == "rmsprop" else ()


def _scalars(family: str | None, group: dict[str, Any], lr: float, step: float) -> tuple[float, ...]:
    """The numbers ``η`` of a tensor takes from its group and step count besides its state (see :func:`_eta`)."""
    if family == "adam":
        beta1, beta2 = group["betas"]
        return lr / (1 - beta1**step), (1 - beta2**step) ** 0.5, group["eps"]
    return (lr, group["eps"]) if family == "rmsprop" else (lr,)


def _eta(family: str | None, v: torch.Tensor, mean: torch.Tensor | None, scalars: list[Any]) -> torch.Tensor:
    """``η`` (module table) from the state tensors of :func:`_keys`, ``v`` and RMSprop's ``ḡ`` (``mean``: None or zeros
    when not centered), and the :func:`_scalars`: floats, or tensors of the state's shape (one value per element). Not
    for SGD."""
    if family == "adam":
        scale, correction, eps = scalars
        # torch evaluates a number over a tensor as the tensor's reciprocal times the number: written so, η has the
        # same bits whether its scalars are numbers (one tensor) or tensors (many records at once).
        return _unseen(v, (v.sqrt() / correction + eps).reciprocal() * scale)
    lr, eps = scalars
    return _unseen(v, ((v if mean is None else v - mean**2).sqrt() + eps).reciprocal() * lr)  # zeros: v - 0 is v


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
    family, state = _family(optimizer), optimizer.state.get(param) or {}
    if family == "sgd":  # one value, the same for every element
        return torch.full((1,), lr, dtype=torch.float64, device=param.device)
    if family is None or "step" not in state:
        return None
    key, *rest = _keys(family, group)
    mean = None if not rest or rest[0] is None else _sampled(state[rest[0]], index)
    return _eta(family, _sampled(state[key], index), mean, list(_scalars(family, group, lr, float(state["step"]))))


def _sampled(values: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """``values`` detached, as it is (``index`` None) or flattened and taken at ``index``."""
    return values.detach() if index is None else values.detach().take(index)


def _unseen(v: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    # An element that never had a non-zero gradient has v = 0 and η = lr/ε, a rate that moves nothing: left out (NaN).
    return eta.where(v != 0, torch.nan)


def percentiles(rows: torch.Tensor) -> torch.Tensor:
    """The :data:`PERCENTILES` of each row of ``rows`` (shape (n, k); NaNs ignored; an all-NaN row gives NaNs), shape
    (n, 5), float64.

    The same values as ``torch.nanquantile(rows.double(), q, dim=1).T`` (linear interpolation): rows of a narrower
    dtype are sorted as they are (the same order, in less time) and the elements found converted. On the CPU the rows
    are sorted by numpy, ten times faster than torch's CPU sort here (2 ms against 0.2 ms for 8 × 1,024), on other
    devices by torch. Which elements a percentile lies between, a few numbers per row, is worked out by numpy on the
    host, in microseconds where torch's dozen small operations took a third of a millisecond.
    """
    if rows.device.type == "cpu":
        ordered = torch.from_numpy(np.sort(rows.numpy(), axis=1))
        count = np.count_nonzero(ordered.numpy() == ordered.numpy(), axis=1, keepdims=True)
    else:
        ordered = rows.sort(dim=1).values
        count = (~rows.isnan()).sum(dim=1, keepdim=True).cpu().numpy()  # NaNs sort last
    last = np.maximum(count - 1, 0)
    position = last * np.array(PERCENTILES, dtype=np.float64) / 100
    low = np.floor(position).astype(np.int64)
    ends = torch.from_numpy(np.concatenate([low, np.minimum(low + 1, last)], axis=1)).to(rows.device)
    below, above = ordered.gather(1, ends).double().chunk(2, dim=1)
    # An all-NaN row has NaNs at both ends: NaN.
    return torch.lerp(below, above, torch.from_numpy(position - low).to(rows.device))


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
class _Record:
    """A recorded step's sampled elements, copied around it: η and |Δθ|/|g| are computed from them later, in bulk."""

    step: int
    lrs: list[float]  # per parameter group, as scheduled for this step
    before: torch.Tensor  # θ, then g, before the step: each tensor's sampled elements, tensor after tensor
    after: torch.Tensor | None = None  # θ after the step, then each state tensor of _keys, in the same order
    scalars: list[tuple[float, ...]] = field(default_factory=list)  # per tensor, its _scalars (NaNs: left alone)


class StepSizes:
    """A per-step hook for :func:`tuner.train.trainer.train`: records ``η`` and ``|Δθ|/|g|`` at :func:`recorded_steps`.

    Called before each optimizer step with the model and optimizer (the same model every step: its parameters are
    listed once), it returns a function to call after the step at a recorded step (None otherwise). :meth:`result`
    is the record, JSON-safe (see there).

    Around a recorded step only the sampled elements are copied, on the device: one gather per parameter tensor (its
    values, gradient, state) and one concatenation before the step and one after. ``η``, ``|Δθ|/|g|`` and their
    percentiles are computed for many records at once (:meth:`_reduce`), and copied to the host in :meth:`result`.
    """

    def __init__(self, steps_per_epoch: int, epochs: int, per_epoch: int = 1) -> None:
        self.epochs, self.per_epoch = epochs, per_epoch
        self.steps = recorded_steps(steps_per_epoch, epochs, per_epoch)
        self.step = 0
        self.params: list[torch.Tensor] = []
        self.names: list[str] = []
        self.numel: list[int] = []
        self.index: list[torch.Tensor | None] = []  # per tensor, the elements sampled (None: all)
        self.blank: list[torch.Tensor] = []  # per tensor, NaNs for its sampled elements (a tensor the step left alone)
        self.zeros: list[torch.Tensor] = []  # per tensor, zeros for them (RMSprop's ḡ when not centered)
        # A record holds the tensors in this order: by number of sampled elements n, then as the model lists them. The
        # tensors of one n are side by side, so their percentiles are computed at once without padding to one size.
        self.order: list[int] = []
        self.sizes: list[tuple[int, int]] = []  # per n in the order, n and its number of tensors
        self.back = torch.empty(0, dtype=torch.long)  # per tensor, its place in order
        self.groups: list[dict[str, Any] | None] = []  # per tensor, its parameter group in the optimizer
        self.family: str | None = None
        self.waiting: list[_Record] = []  # recorded steps not reduced yet
        self.rows: list[torch.Tensor] = []  # per reduction, (records, tensors, 2, 5): η and |Δθ|/|g| percentiles
        self.recorded: list[int] = []
        self.lrs: list[float] = []
        self.defined = False
        self.optimizer = ""

    def __call__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[], None] | None:
        self.step += 1
        if self.step not in self.steps:
            return None
        if not self.params:
            self._start(model)
        record = self._before(optimizer)
        return lambda: self._after(optimizer, record)

    def plan(self, steps_per_epoch: int) -> None:
        """Record at the :func:`recorded_steps` of ``steps_per_epoch``: what a task with its own loop tells
        ``run.build`` (:mod:`tuner.train.loop`), known only once its ``fit`` runs."""
        self.steps = recorded_steps(steps_per_epoch, self.epochs, self.per_epoch)

    def _start(self, model: torch.nn.Module) -> None:
        named = list(model.named_parameters())
        self.params, self.names = [p for _, p in named], [n for n, _ in named]
        self.numel = [p.numel() for p in self.params]
        generator = torch.Generator(device=named[0][1].device).manual_seed(0) if named else None
        self.index = [
            None if p.numel() <= SAMPLE else torch.randint(p.numel(), (SAMPLE,), generator=generator, device=p.device)
            for p in self.params
        ]
        self.blank = [p.detach().new_full((min(p.numel(), SAMPLE),), torch.nan) for p in self.params]
        self.zeros = [torch.zeros_like(blank) for blank in self.blank]
        sizes = [len(blank) for blank in self.blank]
        self.order = sorted(range(len(sizes)), key=sizes.__getitem__)
        self.sizes = [(n, len(list(same))) for n, same in itertools.groupby(sizes[k] for k in self.order)]
        self.back = torch.tensor(self.order, device=self.params[0].device).argsort()

    def _sample(self, k: int, tensor: torch.Tensor) -> torch.Tensor:
        """The sampled elements of ``tensor``, the ``k``-th parameter or its gradient or state, flattened."""
        index = self.index[k]
        return tensor.reshape(-1) if index is None else tensor.take(index)

    @torch.no_grad()
    def _before(self, optimizer: torch.optim.Optimizer) -> _Record:
        values = [self._sample(k, self.params[k]) for k in self.order]
        # A tensor no gradient reached is left alone by the step: NaNs.
        grads = [self.blank[k] if (g := self.params[k].grad) is None else self._sample(k, g) for k in self.order]
        return _Record(self.step, [group["lr"] for group in optimizer.param_groups], torch.cat(values + grads))

    @torch.no_grad()
    def _after(self, optimizer: torch.optim.Optimizer, record: _Record) -> None:
        if not self.groups:  # the optimizer, as it stays for the run
            self.family, self.defined = _family(optimizer), isinstance(optimizer, FAMILIES)
            self.optimizer = type(optimizer).__name__
            place = {id(p): group for group in optimizer.param_groups for p in group["params"]}
            self.groups = [place.get(id(p)) for p in self.params]
        lrs = {id(group): lr for group, lr in zip(optimizer.param_groups, record.lrs)}
        first = optimizer.param_groups[0]
        columns: list[list[torch.Tensor]] = [[self._sample(k, self.params[k]) for k in self.order]]
        columns += [[] for _ in _keys(self.family, first)]
        for k in self.order:
            param, group = self.params[k], self.groups[k]
            state = optimizer.state.get(param) or {}
            if group is None or param.grad is None or not (self.family == "sgd" or "step" in state):
                record.scalars.append(_scalars(self.family, first, math.nan, math.nan))  # left alone: NaNs
                for column in columns[1:]:
                    column.append(self.blank[k])
                continue
            record.scalars.append(_scalars(self.family, group, lrs[id(group)], float(state.get("step", 0))))
            for column, key in zip(columns[1:], _keys(self.family, group)):
                column.append(self.zeros[k] if key is None else self._sample(k, state[key]))
        record.after = torch.cat([part for column in columns for part in column])
        self.waiting.append(record)
        self.recorded.append(record.step)
        self.lrs.append(record.lrs[0])
        if len(self.waiting) * (record.before.numel() + record.after.numel()) >= PENDING:
            self._reduce()

    @torch.no_grad()
    def _reduce(self) -> None:
        """η, |Δθ|/|g| and their percentiles for the records waiting, appended to :attr:`rows`: each operation runs
        once for all of them (once per number of sampled elements, see :attr:`order`)."""
        if not self.waiting:
            return
        before, after = (torch.stack([getattr(r, side) for r in self.waiting]) for side in ("before", "after"))
        count, size = len(self.waiting), before.shape[1] // 2  # records, sampled elements of all tensors
        grad = before[:, size:]
        ratio = (after[:, :size] - before[:, :size]).abs() / grad.abs().where(grad != 0, torch.nan)
        states = after[:, size:].unflatten(1, (-1, size))  # records, state tensor, element
        scalars = torch.tensor([r.scalars for r in self.waiting], dtype=torch.float64, device=after.device)
        parts, start, first = [], 0, 0
        for n, tensors in self.sizes:  # the tensors of n sampled elements, side by side
            shape, end = (count, -1, tensors, n), start + n * tensors
            kinds = [ratio[:, start:end].reshape(shape)]
            if self.family in ("adam", "rmsprop"):  # the scalars of a record's tensor for each of its elements
                v, *mean = states[:, :, start:end].reshape(shape).unbind(1)
                numbers = scalars[:, first : first + tensors, None].to(after.dtype).unbind(3)
                kinds.insert(0, _eta(self.family, v, (mean or [None])[0], list(numbers))[:, None])
            rows = percentiles(torch.cat(kinds, dim=1).reshape(-1, n))
            parts.append(rows.reshape(count, len(kinds), tensors, len(PERCENTILES)))
            start, first = end, first + tensors
        reduced = torch.cat(parts, dim=2)  # records, η | ratio, tensor (in order), percentile
        if reduced.shape[1] == 1:  # SGD's η is its learning rate (NaN: not stepped); another family has none
            eta = scalars[:, :, 0] if self.family == "sgd" else torch.full_like(scalars[:, :, 0], torch.nan)
            reduced = torch.cat([eta[:, None, :, None].expand(-1, -1, -1, len(PERCENTILES)), reduced], dim=1)
        self.rows.append(reduced.index_select(2, self.back).transpose(1, 2))
        self.waiting = []

    def result(self) -> dict[str, Any]:
        """The record: ``percentiles`` (:data:`PERCENTILES`), ``steps`` (1-based optimizer steps), ``lr`` (scheduled,
        first group), ``tensors`` (parameter names), ``numel`` (their sizes), ``effective_lr`` and ``ratio``: per
        tensor, per step, the :data:`PERCENTILES` (NaN where not defined); ``optimizer``: its class name; ``defined``:
        whether the optimizer's family has an ``η`` here. One host copy."""
        self._reduce()
        stacked = torch.cat(self.rows).cpu() if self.rows else torch.empty(0, len(self.names), 2, len(PERCENTILES))
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
