"""The vectorized optimizer: every member of a population stepped at once, each with its own hyperparameters.

The families (``torch.optim``'s update rules) are in :mod:`tuner.batched.adam` and :mod:`tuner.batched.optimizers`,
which also names the family of each ``torch.optim`` class (``VECTORIZED``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from tuner.config.experiment import Config
from tuner.plural import counted
from tuner.train.optim import optimizer_arguments, torch_kwargs

Numbers = dict[str, torch.Tensor]
"""Every member's numbers by name, each a ``[K, 1]`` column (float32, or bool for a flag) of a population of K."""


class Schedule:
    """One member's learning rate at each optimizer step, from the very ``torch.optim`` scheduler that
    :func:`tuner.train.trainer.train` builds for its config, driven on a one-element dummy parameter."""

    def __init__(self, config: Config, steps_per_epoch: int) -> None:
        self.optimizer, self.scheduler = config.build(
            [torch.zeros(1, requires_grad=True)], steps_per_epoch=steps_per_epoch
        )
        self.optimizer.step()  # no gradient, no change: lets the scheduler step without torch's order warning
        self.steps = 0

    def next(self) -> float:
        """The learning rate of the next optimizer step (read before the scheduler steps, as the trainer does)."""
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step()
        self.steps += 1
        return float(lr)


@dataclass
class Hyperparameters:
    """One member of a vectorized optimizer: its hyperparameters (float64 Python numbers and flags) and schedule."""

    values: dict[str, float]
    flags: dict[str, bool]
    schedule: Schedule
    # Numbers torch carries from step to step as float32 tensors (NAdam's mu_product), updated as torch updates them.
    running: dict[str, torch.Tensor] = field(default_factory=dict)


class VectorizedOptimizer:
    """K members' parameters, one row each of a ``[K, P]`` tensor; every member has its own hyperparameters and
    schedule.

    Every per-member number is computed in float64 exactly as ``torch.optim``
    computes it in Python (``1 - beta1``, ``lr / (1 - beta1**t)``), then cast
    to float32, and the update mirrors torch's single-tensor ops one by one,
    with the members' numbers as a ``[K, 1]`` column; torch's branches (weight
    decay 0, momentum 0, the first momentum step, nesterov, centered, amsgrad)
    become per-member masks. Elementwise, each parameter's update is then the
    one ``torch.optim`` makes (all of a member's parameters in one row, so a
    step is a few ops whatever the model). Each member's optimizer state and
    step count are its own: :meth:`reset` starts a member afresh. Before
    stepping, :meth:`plan` works out the next steps of every member's schedule.

    ``params``: ``[K, P]``, stepped in place; ``configs``: K configs of this family (see :attr:`optimizers`);
    ``steps_per_epoch``: for the members' schedules. Raises ValueError for a config count other than K or a config
    of another family.
    """

    # The torch.optim classes this family steps.
    optimizers: ClassVar[tuple[str, ...]] = ()
    # Optimizer state tensors, each shaped like the parameters ([K, P]).
    states: ClassVar[tuple[str, ...]] = ()
    # Hyperparameters per member (floats) and torch's branches (flags).
    value_names: ClassVar[tuple[str, ...]] = ()
    flag_names: ClassVar[tuple[str, ...]] = ()
    # Numbers that change at every step (from the step count and the learning rate).
    factor_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: torch.Tensor, configs: list[Config], steps_per_epoch: int) -> None:
        if len(configs) != len(params):
            raise ValueError(f"{counted(len(configs), 'config')} for {counted(len(params), 'member')}")
        self.params = params
        self.steps_per_epoch = steps_per_epoch
        self.state = {name: torch.zeros_like(params) for name in self.states}
        self.members: list[Hyperparameters] = [self._hyperparameters(config) for config in configs]
        for row in range(len(configs)):
            self._fill(row)
        self._table = torch.empty(0)
        self._values: Numbers = {}
        self._flags: Numbers = {}
        self._any: dict[str, bool] = {}
        self._lrs: list[list[float]] = []
        self._next = 0

    def _hyperparameters(self, config: Config) -> Hyperparameters:
        if config.optimizer not in self.optimizers:
            raise ValueError(f"torch.optim.{config.optimizer} cannot join a population of {type(self).__name__}")
        values, flags = self.hyperparameters(config.optimizer, config.optimizer_kwargs)
        return Hyperparameters(values, flags, Schedule(config, self.steps_per_epoch))

    def hyperparameters(self, name: str, kwargs: dict[str, Any]) -> tuple[dict[str, float], dict[str, bool]]:
        """A member's values and flags from ``torch.optim.<name>``'s keyword arguments (defaults filled in)."""
        raise NotImplementedError

    def initial(self, member: Hyperparameters) -> dict[str, float]:
        """The value each state tensor starts at for ``member`` where torch does not start it at 0 (Adagrad's sum)."""
        return {}

    def _fill(self, row: int) -> None:
        with torch.no_grad():
            for name, value in self.initial(self.members[row]).items():
                self.state[name][row].fill_(value)

    def factors(self, member: Hyperparameters, lr: float, step: int) -> tuple[float, ...]:
        """The member's numbers for its ``step``-th step (counted from 1) at learning rate ``lr``."""
        raise NotImplementedError

    def update(self, p: torch.Tensor, g: torch.Tensor, state: Numbers, h: Numbers, any_: dict[str, bool]) -> None:
        """Step the parameters ``p`` (``[K, P]``) in place from the gradients ``g`` (``[K, P]``), with the optimizer
        ``state`` (``[K, P]`` each); ``h`` holds every member's numbers as ``[K, 1]``, ``any_`` whether any member
        takes each flag's branch."""
        raise NotImplementedError

    def reset(self, row: int, config: Config) -> None:
        """Member ``row`` starts afresh with ``config``: zero optimizer state, step count 0, its own schedule."""
        with torch.no_grad():
            for tensor in self.state.values():
                tensor[row].zero_()
        self.members[row] = self._hyperparameters(config)
        self._fill(row)
        self._next = len(self._lrs)  # the plan is stale

    def keep(self, rows: list[int], params: torch.Tensor) -> None:
        """Keep only the members ``rows`` (in that order), whose parameters are now ``params`` (``[len(rows), P]``)."""
        index = torch.tensor(rows, dtype=torch.long, device=params.device)
        self.params = params
        self.state = {name: t.index_select(0, index) for name, t in self.state.items()}
        self.members = [self.members[row] for row in rows]
        self._next = len(self._lrs)

    def plan(self, steps: int) -> None:
        """Work out every member's next ``steps`` steps: learning rates from its schedule, then its per-step numbers."""
        lrs = [[member.schedule.next() for member in self.members] for _ in range(steps)]
        table = [
            [self.factors(m, lr, m.schedule.steps - steps + j + 1) for m, lr in zip(self.members, row)]
            for j, row in enumerate(lrs)
        ]
        device = self.params.device
        # [steps, factor, member]; float64 first, so that each number is rounded to float32 once, as torch does.
        self._table = torch.tensor(table, dtype=torch.float64).transpose(1, 2).to(device=device, dtype=torch.float32)
        values = torch.tensor([[m.values[n] for m in self.members] for n in self.value_names], dtype=torch.float64)
        self._values = dict(zip(self.value_names, values.to(device=device, dtype=torch.float32).unsqueeze(-1)))
        self._flags = {n: torch.tensor([[m.flags[n]] for m in self.members], device=device) for n in self.flag_names}
        self._any = {n: any(m.flags[n] for m in self.members) for n in self.flag_names}
        self._lrs, self._next = lrs, 0

    def lr(self, row: int) -> float:
        """The learning rate of member ``row``'s last step."""
        return self._lrs[self._next - 1][row]

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        """One step of every member, from the gradients ``grad`` (``[K, P]``, shaped like the parameters).

        Raises RuntimeError when no planned step is left (see :meth:`plan`)."""
        if self._next >= len(self._lrs):
            raise RuntimeError("step() needs plan() first (after the last planned step, reset() or keep())")
        factors = dict(zip(self.factor_names, self._table[self._next].unsqueeze(-1)))
        self._next += 1
        self.update(self.params, grad, self.state, self._values | factors | self._flags, self._any)


def l2_decayed(p: torch.Tensor, g: torch.Tensor, h: Numbers, any_: dict[str, bool]) -> torch.Tensor:
    """``grad.add(param, alpha=weight_decay)`` for the members with L2 weight decay, the gradient itself for the
    others (``[K, P]``)."""
    return torch.where(h["l2"], torch.addcmul(g, p, h["weight_decay"]), g) if any_["l2"] else g


def with_defaults(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``torch.optim.<name>``'s keyword arguments: ``kwargs`` over torch's defaults."""
    return torch_kwargs(name, optimizer_arguments(name)) | kwargs
