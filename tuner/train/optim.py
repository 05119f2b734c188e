"""A config's optimizer and schedule as ``torch.optim`` objects.

Learning-rate schedulers step once per optimizer step (not per epoch), so a
warmup or a one-cycle schedule is smooth even over a few epochs. Where torch
takes a number of steps, the schedule parameter is a fraction of the whole run
(``epochs * steps_per_epoch`` steps); the table below gives each mapping.

============== ===============================================================
schedule       torch.optim.lr_scheduler objects (T = total optimizer steps)
============== ===============================================================
constant       none
step           StepLR(step_size=round(step_size*T), gamma)
exponential    ExponentialLR(gamma=end_factor**(1/T)): lr*end_factor at the end
cosine         CosineAnnealingLR(T_max=T, eta_min)
warmup_cosine  SequentialLR([LinearLR(start_factor, total_iters=W),
               CosineAnnealingLR(T_max=T-W, eta_min)], milestones=[W]),
               W = round(warmup*T)
one_cycle      OneCycleLR(max_lr=lr, total_steps=T, pct_start, div_factor,
               final_div_factor, cycle_momentum=False)
============== ===============================================================

``cycle_momentum=False`` keeps the searched momentum / beta1: torch's default
would overwrite it with its own 0.85..0.95 cycle.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import lr_scheduler as sched

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "Adam": torch.optim.Adam,
    "AdamW": torch.optim.AdamW,
    "SGD": torch.optim.SGD,
    "RMSprop": torch.optim.RMSprop,
    "NAdam": torch.optim.NAdam,
    "RAdam": torch.optim.RAdam,
    "Adagrad": torch.optim.Adagrad,
    "Adamax": torch.optim.Adamax,
}

# Implementation switches and flags that change what is optimised, not how well.
_NOT_HYPERPARAMETERS = {"params", "foreach", "capturable", "differentiable", "fused", "maximize"}


# What torch accepts, for messages (torch's own errors name the value, not the range).
ALLOWED = {
    "lr": ">= 0",
    "beta1": "in [0, 1)",
    "beta2": "in [0, 1)",
    "eps": ">= 0",
    "weight_decay": ">= 0",
    "momentum": ">= 0",
    "dampening": "any float; 0 for nesterov",
    "alpha": ">= 0",
    "betas": "each in [0, 1)",
    "momentum_decay": ">= 0",
    "lr_decay": ">= 0",
    "initial_accumulator_value": ">= 0",
}


def optimizer_arguments(name: str) -> dict[str, Any]:
    """The tunable keyword arguments of ``torch.optim.<name>`` with their defaults.

    ``betas`` is split into ``beta1`` and ``beta2``, which search spaces use.
    """
    signature = inspect.signature(OPTIMIZERS[name].__init__)
    arguments: dict[str, Any] = {}
    for key, parameter in signature.parameters.items():
        if key == "self" or key in _NOT_HYPERPARAMETERS:
            continue
        if key == "betas":
            arguments["beta1"], arguments["beta2"] = parameter.default
        else:
            arguments[key] = parameter.default
    return arguments


def torch_kwargs(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """Search-space values (``beta1``/``beta2`` split) as ``torch.optim.<name>`` kwargs."""
    defaults = optimizer_arguments(name)
    if "beta1" in values or "beta2" in values:
        betas = (values.get("beta1", defaults["beta1"]), values.get("beta2", defaults["beta2"]))
        values = {k: v for k, v in values.items() if k not in ("beta1", "beta2")} | {"betas": betas}
    # In torch's signature order, so that the exported YAML reads like the docs.
    order = list(inspect.signature(OPTIMIZERS[name].__init__).parameters)
    return dict(sorted(values.items(), key=lambda item: order.index(item[0])))


def build_optimizer(name: str, kwargs: dict[str, Any], params: Iterable[Any]) -> torch.optim.Optimizer:
    """``torch.optim.<name>(params, **kwargs)``: ``params`` as torch takes them (tensors, ``(name, tensor)`` pairs from
    ``named_parameters()``, or parameter-group dicts); raises what torch raises for a bad value."""
    return OPTIMIZERS[name](params, **kwargs)


def _steps(fraction: float, total: int) -> int:
    return max(1, round(fraction * total))


def _step(optimizer: torch.optim.Optimizer, total: int, *, step_size: float, gamma: float = 0.1):
    return sched.StepLR(optimizer, step_size=_steps(step_size, total), gamma=gamma)


def _exponential(optimizer: torch.optim.Optimizer, total: int, *, end_factor: float):
    return sched.ExponentialLR(optimizer, gamma=end_factor ** (1.0 / total))


def _cosine(optimizer: torch.optim.Optimizer, total: int, *, eta_min: float = 0.0):
    return sched.CosineAnnealingLR(optimizer, T_max=total, eta_min=eta_min)


def _warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total: int,
    *,
    warmup: float,
    start_factor: float = 0.01,
    eta_min: float = 0.0,
):
    # Both phases need at least one step.
    warm = min(_steps(warmup, total), max(1, total - 1))
    phases = [
        sched.LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warm),
        sched.CosineAnnealingLR(optimizer, T_max=max(1, total - warm), eta_min=eta_min),
    ]
    return sched.SequentialLR(optimizer, phases, milestones=[warm])


def _one_cycle(
    optimizer: torch.optim.Optimizer,
    total: int,
    *,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
):
    return sched.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=total,
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        cycle_momentum=False,
    )


SCHEDULES: dict[str, Callable[..., sched.LRScheduler] | None] = {
    "constant": None,
    "step": _step,
    "exponential": _exponential,
    "cosine": _cosine,
    "warmup_cosine": _warmup_cosine,
    "one_cycle": _one_cycle,
}


def schedule_arguments(name: str) -> dict[str, Any]:
    """The parameters of schedule ``name``: default, or ``inspect.Parameter.empty`` if required."""
    builder = SCHEDULES[name]
    if builder is None:
        return {}
    parameters = list(inspect.signature(builder).parameters.values())[2:]
    return {p.name: p.default for p in parameters}


def check_schedule(name: str, params: dict[str, Any], total_steps: int = 1000) -> None:
    """Build schedule ``name`` on a throwaway optimizer and take a few steps: torch's checks, and ours.

    Raises what torch raises for a bad value (some only show at the first step).
    """
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = build_scheduler(name, params, optimizer, total_steps)
    if scheduler is None:  # constant: nothing to step
        return
    for _ in range(3):
        optimizer.step()
        scheduler.step()
        lr = optimizer.param_groups[0]["lr"]
        if not (isinstance(lr, float) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"the learning rate becomes {lr!r}")


def build_scheduler(
    name: str, params: dict[str, Any], optimizer: torch.optim.Optimizer, total_steps: int
) -> sched.LRScheduler | None:
    """The scheduler of schedule ``name`` over ``total_steps`` optimizer steps (None if constant)."""
    builder = SCHEDULES[name]
    return None if builder is None else builder(optimizer, total_steps, **params)
