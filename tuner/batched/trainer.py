"""Batched trials: up to K configurations of one model trained at once, as one population.

The members' parameters are stacked along a leading member dimension; one
forward and one backward pass serve every member (``torch.func.functional_call``
under ``torch.func.vmap``: each member sees only its own parameters, batches
and buffers), and a vectorized optimizer steps every member with its own
hyperparameters, learning-rate schedule and step count. Given identical
gradients, the vectorized Adam, AdamW, SGD, RMSprop, NAdam, RAdam, Adagrad and Adamax equal ``torch.optim``'s
single-tensor path (the CPU default) bit for bit; whole trainings differ from
the same trial run alone only by rounding (the stacked forward and backward
passes group sums differently), which training amplifies.

:func:`train_batched` mirrors :func:`tuner.train.trainer.train` member by member: the
same seeding (a member's initial parameters are those of its trial run alone),
its own batch order, the same per-epoch metrics, divergence check, callback and
test evaluation. When a member ends, its slot is refilled with the next
configuration. Like the trainer, it knows nothing of Optuna or MLflow.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from tuner.config.experiment import Config
from tuner.errors import reason
from tuner.tasks.check import CHECK_BATCH
from tuner.tasks.task import Data, Split, Task, is_loop
from tuner.train.optim import optimizer_arguments, torch_kwargs
from tuner.train.trainer import EVAL_CHUNK, EpochMetrics, RunResult, autocast, divergence, drops_last, steps_per_epoch

# Share of the free device memory a population may plan to use.
MEMORY_SHARE = 0.8
# vmap warns at every step where an operator has no batching rule and runs member by member
# (attention on the CPU): slower, not wrong. Autograd warns once that a member's gradient is laid
# out unlike its parameter (a view of a row of StackedModel.flat): it is copied, not wrong.
_QUIET = (
    "There is a performance drop because we have not yet implemented the batching rule",
    "grad and param do not obey the gradient layout contract",
)

Key = Hashable
"""The caller's handle of a member (an Optuna trial): given by ``start``, passed back to ``callback`` and ``end``."""


# ---------------------------------------------------------------------------------------------
# Vectorized optimizers


class _Schedule:
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
        return lr


@dataclass
class _Hyper:
    """One member of a vectorized optimizer: its hyperparameters (float64 Python numbers and flags) and schedule."""

    values: dict[str, float]
    flags: dict[str, bool]
    schedule: _Schedule
    # Numbers torch carries from step to step as float32 tensors (NAdam's mu_product), updated as torch updates them.
    running: dict[str, torch.Tensor] = field(default_factory=dict)


class VectorizedOptimizer:
    """K members' parameters, one row each of a ``[K, P]`` tensor; every member has its own hyperparameters and schedule.

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
    """

    # Optimizer state tensors, each shaped like the parameters ([K, P]).
    states: ClassVar[tuple[str, ...]] = ()
    # Hyperparameters per member (floats) and torch's branches (flags).
    value_names: ClassVar[tuple[str, ...]] = ()
    flag_names: ClassVar[tuple[str, ...]] = ()
    # Numbers that change at every step (from the step count and the learning rate).
    factor_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: torch.Tensor, configs: list[Config], steps_per_epoch: int) -> None:
        if len(configs) != len(params):
            raise ValueError(f"{len(configs)} configs for {len(params)} members")
        self.params = params
        self.steps_per_epoch = steps_per_epoch
        self.state = {name: torch.zeros_like(params) for name in self.states}
        self.members: list[_Hyper] = [self._hyper(config) for config in configs]
        for row in range(len(configs)):
            self._fill(row)
        self._table = torch.empty(0)
        self._lrs: list[list[float]] = []
        self._next = 0

    def _hyper(self, config: Config) -> _Hyper:
        if VECTORIZED.get(config.optimizer) is not type(self):
            raise ValueError(f"torch.optim.{config.optimizer} cannot join a population of {type(self).__name__}")
        values, flags = self.hyperparameters(config.optimizer, config.optimizer_kwargs)
        return _Hyper(values, flags, _Schedule(config, self.steps_per_epoch))

    def hyperparameters(self, name: str, kwargs: dict) -> tuple[dict[str, float], dict[str, bool]]:
        """A member's values and flags from ``torch.optim.<name>``'s keyword arguments (defaults filled in)."""
        raise NotImplementedError

    def initial(self, member: _Hyper) -> dict[str, float]:
        """The value each state tensor starts at for ``member`` where torch does not start it at 0 (Adagrad's sum)."""
        return {}

    def _fill(self, row: int) -> None:
        with torch.no_grad():
            for name, value in self.initial(self.members[row]).items():
                self.state[name][row].fill_(value)

    def factors(self, member: _Hyper, lr: float, step: int) -> tuple[float, ...]:
        """The member's numbers for its ``step``-th step (counted from 1) at learning rate ``lr``."""
        raise NotImplementedError

    def update(
        self,
        p: torch.Tensor,
        g: torch.Tensor,
        state: dict[str, torch.Tensor],
        h: dict[str, torch.Tensor],
        any_: dict[str, bool],
    ) -> None:
        """Step the parameters ``p`` in place from the gradients ``g``; ``h`` holds every member's numbers as ``[K, 1]``,
        ``any_`` whether any member takes each flag's branch."""
        raise NotImplementedError

    def reset(self, row: int, config: Config) -> None:
        """Member ``row`` starts afresh with ``config``: zero optimizer state, step count 0, its own schedule."""
        with torch.no_grad():
            for tensor in self.state.values():
                tensor[row].zero_()
        self.members[row] = self._hyper(config)
        self._fill(row)
        self._next = len(self._lrs)  # the plan is stale

    def keep(self, rows: list[int], params: torch.Tensor) -> None:
        """Keep only the members ``rows`` (in that order), whose parameters are now ``params``."""
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
        """One step of every member, from the gradients ``grad`` (shaped like the parameters)."""
        if self._next >= len(self._lrs):
            raise RuntimeError("step() needs plan() first (after the last planned step, reset() or keep())")
        factors = dict(zip(self.factor_names, self._table[self._next].unsqueeze(-1)))
        self._next += 1
        self.update(self.params, grad, self.state, self._values | factors | self._flags, self._any)


def _decayed(p: torch.Tensor, g: torch.Tensor, h: dict[str, torch.Tensor], any_: dict[str, bool]) -> torch.Tensor:
    """``grad.add(param, alpha=weight_decay)`` for the members with L2 weight decay, the gradient itself for the others."""
    return torch.where(h["l2"], torch.addcmul(g, p, h["weight_decay"]), g) if any_["l2"] else g


def _kwargs(name: str, kwargs: dict) -> dict:
    """``torch.optim.<name>``'s keyword arguments: ``kwargs`` over torch's defaults."""
    return torch_kwargs(name, optimizer_arguments(name)) | kwargs


def _adam_family(name: str, kwargs: dict) -> tuple[dict[str, float], dict[str, bool]]:
    """The values and flags that Adam, AdamW, NAdam, RAdam and Adamax share: betas, eps, weight decay, L2 or decoupled."""
    k = _kwargs(name, kwargs)
    beta1, beta2 = k["betas"]
    decoupled = name == "AdamW" or bool(k.get("decoupled_weight_decay"))
    # beta1 is not a value_name: only factors() uses it, in float64.
    values = {
        "beta1": beta1,
        "lerp": 1 - beta1,
        "beta2": beta2,
        "one_minus_beta2": 1 - beta2,
        "eps": k["eps"],
        "weight_decay": k["weight_decay"],
    }
    wd = k["weight_decay"] != 0
    return values, {"l2": wd and not decoupled, "decoupled": wd and decoupled}


def _decoupled_decay(member: _Hyper, lr: float) -> float:
    """``1 - lr * weight_decay`` for a member with decoupled weight decay; 1.0 (the parameter bit for bit) where torch skips it."""
    return 1 - lr * member.values["weight_decay"] if member.flags["decoupled"] else 1.0


def _moments(
    p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor], h: dict[str, torch.Tensor], any_: dict[str, bool]
) -> torch.Tensor:
    """Adam's, NAdam's and RAdam's common start: weight decay (L2 into the gradient, or decoupled on the parameters),
    then the first and second moments ``exp_avg`` and ``exp_avg_sq`` updated in place; returns the gradient used."""
    g = _decayed(p, g, h, any_)
    if any_["decoupled"]:
        p.mul_(h["decay"])
    state["exp_avg"].lerp_(g, h["lerp"])
    state["exp_avg_sq"].mul_(h["beta2"]).addcmul_(g * h["one_minus_beta2"], g)
    return g


class VectorizedAdam(VectorizedOptimizer):
    """``torch.optim.Adam`` and ``AdamW`` (decoupled weight decay), amsgrad included."""

    states = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    value_names = ("lerp", "beta2", "one_minus_beta2", "eps", "weight_decay")
    flag_names = ("l2", "amsgrad", "decoupled")
    factor_names = ("neg_step_size", "bias_correction2_sqrt", "decay")

    def hyperparameters(self, name: str, kwargs: dict) -> tuple[dict[str, float], dict[str, bool]]:
        values, flags = _adam_family(name, kwargs)
        return values, flags | {"amsgrad": bool(_kwargs(name, kwargs)["amsgrad"])}

    def factors(self, member: _Hyper, lr: float, step: int) -> tuple[float, ...]:
        v = member.values
        bias_correction1 = 1 - v["beta1"] ** step
        bias_correction2 = 1 - v["beta2"] ** step
        return -(lr / bias_correction1), bias_correction2**0.5, _decoupled_decay(member, lr)

    def update(self, p, g, state, h, any_):
        g = _moments(p, g, state, h, any_)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        second = exp_avg_sq
        if any_["amsgrad"]:
            torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            second = torch.where(h["amsgrad"], state["max_exp_avg_sq"], exp_avg_sq)
        denom = (second.sqrt() / h["bias_correction2_sqrt"]).add_(h["eps"])
        p.addcdiv_(exp_avg * h["neg_step_size"], denom)


class VectorizedSGD(VectorizedOptimizer):
    """``torch.optim.SGD`` with momentum, dampening, nesterov and weight decay."""

    states = ("momentum_buffer",)
    value_names = ("momentum", "one_minus_dampening", "weight_decay")
    flag_names = ("l2", "momentum_on", "nesterov")
    factor_names = ("neg_lr", "first")

    def hyperparameters(self, name: str, kwargs: dict) -> tuple[dict[str, float], dict[str, bool]]:
        k = _kwargs(name, kwargs)
        values = {
            "momentum": k["momentum"],
            "one_minus_dampening": 1 - k["dampening"],
            "weight_decay": k["weight_decay"],
        }
        return values, {
            "l2": k["weight_decay"] != 0,
            "momentum_on": k["momentum"] != 0,
            "nesterov": bool(k["nesterov"]),
        }

    def factors(self, member: _Hyper, lr: float, step: int) -> tuple[float, ...]:
        return -lr, float(step == 1)

    def update(self, p, g, state, h, any_):
        g = _decayed(p, g, h, any_)
        if any_["momentum_on"]:
            buf = state["momentum_buffer"]
            # The first step copies the gradient into the buffer, without dampening.
            buf.copy_(torch.where(h["first"] > 0, g, torch.addcmul(buf * h["momentum"], g, h["one_minus_dampening"])))
            direction = (
                torch.where(h["nesterov"], torch.addcmul(g, buf, h["momentum"]), buf) if any_["nesterov"] else buf
            )
            g = torch.where(h["momentum_on"], direction, g)
        p.addcmul_(g, h["neg_lr"])


class VectorizedRMSprop(VectorizedOptimizer):
    """``torch.optim.RMSprop`` with alpha, eps, weight decay, momentum and centered."""

    states = ("square_avg", "grad_avg", "momentum_buffer")
    value_names = ("alpha", "one_minus_alpha", "eps", "weight_decay", "momentum")
    flag_names = ("l2", "centered", "momentum_on")
    factor_names = ("neg_lr",)

    def hyperparameters(self, name: str, kwargs: dict) -> tuple[dict[str, float], dict[str, bool]]:
        k = _kwargs(name, kwargs)
        values = {
            "alpha": k["alpha"],
            "one_minus_alpha": 1 - k["alpha"],
            "eps": k["eps"],
            "weight_decay": k["weight_decay"],
            "momentum": k["momentum"],
        }
        return values, {"l2": k["weight_decay"] != 0, "centered": bool(k["centered"]), "momentum_on": k["momentum"] > 0}

    def factors(self, member: _Hyper, lr: float, step: int) -> tuple[float, ...]:
        return (-lr,)

    def update(self, p, g, state, h, any_):
        g = _decayed(p, g, h, any_)
        square_avg = state["square_avg"]
        square_avg.mul_(h["alpha"]).addcmul_(g * h["one_minus_alpha"], g)
        if any_["centered"]:
            grad_avg = state["grad_avg"].lerp_(g, h["one_minus_alpha"])
            avg = torch.where(
                h["centered"], square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_(), square_avg.sqrt()
            )
        else:
            avg = square_avg.sqrt()
        avg.add_(h["eps"])
        if any_["momentum_on"]:
            buf = state["momentum_buffer"].mul_(h["momentum"]).addcdiv_(g, avg)
            p.copy_(
                torch.where(
                    h["momentum_on"], torch.addcmul(p, buf, h["neg_lr"]), torch.addcdiv(p, g * h["neg_lr"], avg)
                )
            )
        else:
            p.addcdiv_(g * h["neg_lr"], avg)


class VectorizedNAdam(VectorizedOptimizer):
    """``torch.optim.NAdam`` (Dozat 2016): momentum decay, L2 or decoupled weight decay."""

    states = ("exp_avg", "exp_avg_sq")
    value_names = ("lerp", "beta2", "one_minus_beta2", "eps", "weight_decay")
    flag_names = ("l2", "decoupled")
    factor_names = ("bias_correction2", "grad_value", "avg_value", "decay")

    def hyperparameters(self, name: str, kwargs: dict) -> tuple[dict[str, float], dict[str, bool]]:
        values, flags = _adam_family(name, kwargs)
        return values | {"momentum_decay": _kwargs(name, kwargs)["momentum_decay"]}, flags

    def factors(self, member: _Hyper, lr: float, step: int) -> tuple[float, ...]:
        v = member.values
        mu = v["beta1"] * (1.0 - 0.5 * (0.96 ** (step * v["momentum_decay"])))
        mu_next = v["beta1"] * (1.0 - 0.5 * (0.96 ** ((step + 1) * v["momentum_decay"])))
        # torch keeps the product of the mu's in a float32 tensor: multiplied there, read back as a Python float.
        product = member.running.setdefault("mu_product", torch.ones((), dtype=torch.float32)).mul_(mu).item()
        grad_value = -lr * (1.0 - mu) / (1.0 - product)
        avg_value = (-lr * mu_next) / (1.0 - product * mu_next)
        return 1 - v["beta2"] ** step, grad_value, avg_value, _decoupled_decay(member, lr)

    def update(self, p, g, state, h, any_):
        g = _moments(p, g, state, h, any_)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        denom = exp_avg_sq.div(h["bias_correction2"]).sqrt().add_(h["eps"])
        p.addcdiv_(g * h["grad_value"], denom)
        p.addcdiv_(exp_avg * h["avg_value"], denom)


class VectorizedRAdam(VectorizedOptimizer):
    """``torch.optim.RAdam`` (Liu et al. 2020): the adaptive step only once the variance is tractable (rho_t > 5)."""

    states = ("exp_avg", "exp_avg_sq")
    value_names = ("lerp", "beta2", "one_minus_beta2", "eps", "weight_decay")
    flag_names = ("l2", "decoupled")
    factor_names = ("bias_correction1", "lr", "bias_correction2_sqrt", "rect", "rectified", "decay")

    def hyperparameters(self, name: str, kwargs: dict) -> tuple[dict[str, float], dict[str, bool]]:
        return _adam_family(name, kwargs)

    def factors(self, member: _Hyper, lr: float, step: int) -> tuple[float, ...]:
        v = member.values
        bias_correction2 = 1 - v["beta2"] ** step
        rho_inf = 2 / (1 - v["beta2"]) - 1
        rho_t = rho_inf - 2 * step * (v["beta2"] ** step) / bias_correction2
        rectified = rho_t > 5.0
        rect = (
            ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5 if rectified else 0.0
        )
        return 1 - v["beta1"] ** step, lr, bias_correction2**0.5, rect, float(rectified), _decoupled_decay(member, lr)

    def update(self, p, g, state, h, any_):
        g = _moments(p, g, state, h, any_)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        plain = exp_avg / h["bias_correction1"] * h["lr"]
        # torch's `bias_correction2**0.5 / denom` is `denom.reciprocal() * bias_correction2**0.5`.
        adaptive = exp_avg_sq.sqrt().add_(h["eps"]).reciprocal_() * h["bias_correction2_sqrt"]
        p.sub_(torch.where(h["rectified"] > 0, plain * adaptive * h["rect"], plain))


class VectorizedAdagrad(VectorizedOptimizer):
    """``torch.optim.Adagrad`` (Duchi et al. 2011) with lr decay, an initial accumulator and L2 weight decay."""

    states = ("sum",)
    value_names = ("eps", "weight_decay")
    flag_names = ("l2",)
    factor_names = ("neg_clr",)

    def hyperparameters(self, name: str, kwargs: dict) -> tuple[dict[str, float], dict[str, bool]]:
        k = _kwargs(name, kwargs)
        values = {
            "eps": k["eps"],
            "weight_decay": k["weight_decay"],
            "lr_decay": k["lr_decay"],
            "initial": k["initial_accumulator_value"],
        }
        return values, {"l2": k["weight_decay"] != 0}

    def initial(self, member: _Hyper) -> dict[str, float]:
        return {"sum": member.values["initial"]}

    def factors(self, member: _Hyper, lr: float, step: int) -> tuple[float, ...]:
        return (-(lr / (1 + (step - 1) * member.values["lr_decay"])),)

    def update(self, p, g, state, h, any_):
        g = _decayed(p, g, h, any_)
        std = state["sum"].addcmul_(g, g).sqrt().add_(h["eps"])
        p.addcdiv_(g * h["neg_clr"], std)


class VectorizedAdamax(VectorizedOptimizer):
    """``torch.optim.Adamax`` (Kingma & Ba 2015, the infinity norm) with L2 weight decay."""

    states = ("exp_avg", "exp_inf")
    value_names = ("lerp", "beta2", "eps", "weight_decay")
    flag_names = ("l2",)
    factor_names = ("neg_clr",)

    def hyperparameters(self, name: str, kwargs: dict) -> tuple[dict[str, float], dict[str, bool]]:
        values, flags = _adam_family(name, kwargs)
        return values, {"l2": flags["l2"]}

    def factors(self, member: _Hyper, lr: float, step: int) -> tuple[float, ...]:
        return (-(lr / (1 - member.values["beta1"] ** step)),)

    def update(self, p, g, state, h, any_):
        g = _decayed(p, g, h, any_)
        exp_avg, exp_inf = state["exp_avg"], state["exp_inf"]
        exp_avg.lerp_(g, h["lerp"])
        torch.maximum(exp_inf.mul_(h["beta2"]), g.abs().add_(h["eps"]), out=exp_inf)
        p.addcdiv_(exp_avg * h["neg_clr"], exp_inf)


VECTORIZED: dict[str, type[VectorizedOptimizer]] = {
    "Adam": VectorizedAdam,
    "AdamW": VectorizedAdam,
    "SGD": VectorizedSGD,
    "RMSprop": VectorizedRMSprop,
    "NAdam": VectorizedNAdam,
    "RAdam": VectorizedRAdam,
    "Adagrad": VectorizedAdagrad,
    "Adamax": VectorizedAdamax,
}


# ---------------------------------------------------------------------------------------------
# The stacked model


# Modules that act elementwise: on stacked inputs [K, batch, ...] as on [batch, ...] (dropout draws a mask per element).
_ELEMENTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
)
# Modules that act on each channel of [batch, channels, H, W] alone: on the members' channels side by side as on one member's.
_CHANNELWISE = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def _stackable(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Conv2d):
        return layer.padding_mode == "zeros"
    if isinstance(layer, nn.Flatten):
        return (layer.start_dim, layer.end_dim) == (1, -1)
    return isinstance(layer, (nn.Linear, *_ELEMENTWISE, *_CHANNELWISE))


def _feed_forward_layers(module: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The layers of a feed-forward stack (an ``nn.Sequential`` of ``nn.Linear``, ``nn.Conv2d``, elementwise and
    channelwise modules, ``nn.Flatten``), each with its name in the module, or None for any other model.

    A ``ReLU`` right before a ``MaxPool2d`` comes after it instead: the outputs and the gradients are the same to the
    bit (max and ReLU commute, and the gradient reaches the same element or none), and ReLU and its backward then run
    on a quarter of the elements (2x2 pooling). In a stacked step of digits-cnn those were a fifth of the time.
    """
    layers = [(str(i), layer) for i, layer in enumerate(module)] if type(module) is nn.Sequential else []
    if not (
        any(isinstance(layer, (nn.Linear, nn.Conv2d)) for _, layer in layers)
        and all(_stackable(layer) for _, layer in layers)
    ):
        return None
    for i in range(len(layers) - 1):
        if type(layers[i][1]) is nn.ReLU and isinstance(layers[i + 1][1], nn.MaxPool2d):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    return layers


def _side_by_side(x: torch.Tensor) -> torch.Tensor:
    """``[K, batch, C, H, W]`` -> ``[batch, K*C, H, W]``, channels-last."""
    return x.transpose(0, 1).flatten(1, 2).contiguous(memory_format=torch.channels_last)


def _feed_forward(
    layers: list[tuple[str, nn.Module]], params: dict[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """Every member's feed-forward stack on its own inputs ``x`` (``[K, batch, ...]``): each ``nn.Linear`` as one batched
    matrix product, each ``nn.Conv2d`` as one convolution grouped by member over the members' channels side by side
    (``[batch, K*C, H, W]``, channels-last, which vmap's grouped convolution is not: 1.5x faster here)."""
    members, side_by_side = len(x), False
    for name, layer in layers:
        weight, bias = params.get(f"{name}.weight"), params.get(f"{name}.bias")
        if isinstance(layer, (nn.Conv2d, *_CHANNELWISE)) and not side_by_side:
            x, side_by_side = _side_by_side(x), True
        elif isinstance(layer, (nn.Linear, nn.Flatten)) and side_by_side:
            x, side_by_side = x.unflatten(1, (members, -1)).transpose(0, 1), False
        if isinstance(layer, nn.Conv2d):
            x = F.conv2d(
                x,
                weight.flatten(0, 1),
                None if bias is None else bias.flatten(),
                layer.stride,
                layer.padding,
                layer.dilation,
                layer.groups * members,
            )
        elif isinstance(layer, nn.Linear):
            rows = x.reshape(members, -1, x.shape[-1])
            out = (
                torch.bmm(rows, weight.transpose(1, 2))
                if bias is None
                else torch.baddbmm(bias.unsqueeze(1), rows, weight.transpose(1, 2))
            )
            x = out.view(*x.shape[:-1], out.shape[-1])
        elif isinstance(layer, nn.Flatten):
            x = x.flatten(2)
        else:
            x = layer(x)
    return x.unflatten(1, (members, -1)).transpose(0, 1) if side_by_side else x


class StackedModel:
    """K models of one architecture as one, with the loss: parameters and buffers stacked along a leading member dimension.

    All of a member's parameters lie in one row of :attr:`flat` (``[K, P]``,
    for the vectorized optimizer); :attr:`params` views them per parameter
    (``[K, *shape]``, the leaves that autograd fills). :meth:`losses` runs
    every member on its own batch (``[K, batch, ...]``) and :meth:`shared`
    on the same inputs: a feed-forward stack of linear and 2-d convolution
    layers by hand (see :func:`_feed_forward`, measured faster here), any other
    model with ``torch.func.vmap`` over ``functional_call`` of one template
    module; the loss always under vmap.
    Dropout draws different masks per member (``randomness="different"``);
    buffers such as BatchNorm's running statistics are each member's own.
    A frozen parameter (``requires_grad=False``) is not in :attr:`flat`: like
    ``torch.optim``, which skips a parameter without a gradient, the population
    never steps it; each member keeps its own copy in :attr:`frozen`
    (``[K, *shape]``), as it keeps its buffers.
    """

    def __init__(
        self, models: list[torch.nn.Module], loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> None:
        self.module = models[0]
        params, self.buffers = stack_module_state(models)
        trainable = {name for name, p in self.module.named_parameters() if p.requires_grad}
        self.frozen = {name: t.detach() for name, t in params.items() if name not in trainable}
        params = {name: t for name, t in params.items() if name in trainable}
        self.names, self.shapes = list(params), [t.shape[1:] for t in params.values()]
        self.flat = torch.cat([t.detach().flatten(1) for t in params.values()], dim=1)
        self.params = self._views()
        self._layers = _feed_forward_layers(self.module)
        self._loss = vmap(loss, randomness="different")
        self._losses = vmap(
            lambda params, buffers, x, y: loss(self._call(params, buffers, x), y), randomness="different"
        )
        self._shared = vmap(self._call, in_dims=(0, 0, None), randomness="different")

    def _views(self) -> dict[str, torch.Tensor]:
        parts = self.flat.split([math.prod(shape) for shape in self.shapes], dim=1)
        return {
            name: part.view(len(self.flat), *shape).detach().requires_grad_()
            for name, part, shape in zip(self.names, parts, self.shapes)
        }

    def _call(self, params: dict[str, torch.Tensor], fixed: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, (params, fixed), (x,))

    def _fixed(self) -> dict[str, torch.Tensor]:
        """What a member has besides the parameters it trains: its buffers and its frozen parameters."""
        return self.buffers | self.frozen

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every member's loss on its own batch: ``x[k]``, ``y[k]`` for member ``k``; ``[K]``."""
        if self._layers is not None:
            return self._loss(_feed_forward(self._layers, self.params | self.frozen, x), y)
        return self._losses(self.params, self._fixed(), x, y)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's output for the same inputs ``x``: ``[K, len(x), ...]``."""
        if self._layers is not None:
            return _feed_forward(self._layers, self.params | self.frozen, x.expand(len(self.flat), *x.shape))
        return self._shared(self.params, self._fixed(), x)

    def grad(self) -> torch.Tensor:
        """Every member's gradients after a backward pass, shaped like :attr:`flat`; the parameters' ``.grad`` are cleared."""
        missing = [name for name, p in self.params.items() if p.grad is None]
        if missing:
            raise RuntimeError(
                f"parameters {', '.join(missing)} got no gradient (torch.optim would skip them; a population cannot)"
            )
        grad = torch.cat([p.grad.flatten(1) for p in self.params.values()], dim=1)
        for p in self.params.values():
            p.grad = None
        return grad

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    @torch.no_grad()
    def load(self, row: int, model: torch.nn.Module) -> None:
        """Member ``row`` takes ``model``'s parameters (frozen ones too) and buffers."""
        own = dict(model.named_parameters())
        self.flat[row].copy_(torch.cat([own[name].flatten() for name in self.names]))
        for name, own_buffer in model.named_buffers():
            self.buffers[name][row].copy_(own_buffer)
        for name, frozen in self.frozen.items():
            frozen[row].copy_(own[name])

    def keep(self, rows: list[int]) -> None:
        """Keep only the members ``rows``, in that order (new tensors)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.flat.device)
        self.flat = self.flat.index_select(0, index)
        self.params = self._views()
        self.buffers = {name: t.index_select(0, index) for name, t in self.buffers.items()}
        self.frozen = {name: t.index_select(0, index) for name, t in self.frozen.items()}


def seeded_model(task: Task, seed: int, device: torch.device) -> torch.nn.Module:
    """``task.model()`` on ``device`` built under ``torch.manual_seed(seed)``, as :func:`tuner.train.trainer.train` builds it;
    the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return task.model().to(device)


# ---------------------------------------------------------------------------------------------
# The population trainer


@dataclass
class _Member:
    """A configuration being trained in one slot of the population."""

    key: Key
    config: Config
    order: torch.Generator
    started: float
    result: RunResult = field(default_factory=RunResult)


class _Population:
    """The state of :func:`train_batched`: members, stacked model and vectorized optimizer, row by row."""

    def __init__(self, task: Task, data: Data, entries: list[tuple[Key, Config]]) -> None:
        self.task, self.data = task, data
        self.device = data.train.x.device
        first = entries[0][1]
        self.shared = _shared(first)
        self.steps = steps_per_epoch(len(data.train), first.batch_size, drops_last(task))
        for _, config in entries:
            self._check(config)
        self.model = StackedModel([seeded_model(task, config.seed, self.device) for _, config in entries], task.loss)
        self.optimizer = VECTORIZED[first.optimizer](self.model.flat, [c for _, c in entries], self.steps)
        self.members = [self._member(key, config) for key, config in entries]

    def _check(self, config: Config) -> None:
        if _shared(config) != self.shared:
            raise ValueError(f"a config with {_shared(config)} cannot join a population of {self.shared}")

    def _member(self, key: Key, config: Config) -> _Member:
        return _Member(key, config, torch.Generator(device=self.device).manual_seed(config.seed), time.perf_counter())

    def replace(self, row: int, key: Key, config: Config) -> None:
        """Slot ``row`` starts ``config`` afresh: its own initial parameters, optimizer state, step count and batch order."""
        self._check(config)
        self.model.load(row, seeded_model(self.task, config.seed, self.device))
        self.optimizer.reset(row, config)
        self.members[row] = self._member(key, config)

    def keep(self, rows: list[int]) -> None:
        self.model.keep(rows)
        self.optimizer.keep(rows, self.model.flat)
        self.members = [self.members[row] for row in rows]

    def epoch(self) -> list[EpochMetrics]:
        """One epoch of every member, each on its own batch order; then each member's metrics (its epochs counted apart)."""
        x, y = self.data.train.x, self.data.train.y
        n, batch_size, amp = len(x), self.shared[2], self.shared[3]
        self.model.train()
        permutations = torch.stack(
            [torch.randperm(n, generator=m.order, device=self.device) for m in self.members]
        ).flatten()
        xs = x.index_select(0, permutations).view(len(self.members), n, *x.shape[1:])
        ys = y.index_select(0, permutations).view(len(self.members), n, *y.shape[1:])
        loss_sum = torch.zeros(len(self.members), device=self.device)
        self.optimizer.plan(self.steps)
        for start in range(0, self.steps * batch_size, batch_size):
            with autocast(self.device, amp):
                losses = self.model.losses(xs[:, start : start + batch_size], ys[:, start : start + batch_size])
            # The sum of the members' losses gives every member its own gradient.
            losses.sum().backward()
            self.optimizer.step(self.model.grad())
            loss_sum += losses.detach()
        # One host sync per epoch, as in the trainer.
        train_losses = [total / self.steps for total in loss_sum.tolist()]
        validation = self.evaluate(self.data.val)
        now = time.perf_counter()
        return [
            EpochMetrics(
                len(m.result.history) + 1, train_loss, val_loss, val_metric, self.optimizer.lr(row), now - m.started
            )
            for row, (m, train_loss, (val_loss, val_metric)) in enumerate(zip(self.members, train_losses, validation))
        ]

    @torch.inference_mode()
    def evaluate(self, split: Split) -> list[tuple[float, float]]:
        """Every member's loss and metric over a whole split, as :func:`tuner.train.trainer.evaluate` computes them."""
        self.model.train(False)
        with autocast(self.device, self.shared[3]):
            output = torch.cat(
                [self.model.shared(split.x[i : i + EVAL_CHUNK]) for i in range(0, len(split), EVAL_CHUNK)], dim=1
            )
            losses = [self.task.loss(out, split.y).item() for out in output]
        return [(loss, self.task.score(out, split.y)) for loss, out in zip(losses, output)]


def _shared(config: Config) -> tuple:
    """What every member of a population shares: the optimizer family, epochs, batch size and mixed precision."""
    return VECTORIZED[config.optimizer].__name__, config.epochs, config.batch_size, config.amp


def train_batched(
    task: Task,
    data: Data,
    size: int,
    start: Callable[[int], list[tuple[Key, Config]]],
    callback: Callable[[Key, EpochMetrics], bool | None],
    end: Callable[[list[tuple[Key, RunResult]]], None],
    *,
    test: bool = False,
) -> None:
    """Train configs ``size`` at a time as one population, like :func:`tuner.train.trainer.train` trains one.

    ``start(n)`` gives up to ``n`` next members, ``(key, config)`` each, or
    fewer (none) when there are no more for now; it fills the population at
    first and the slots that members leave. Members share the optimizer family
    (Adam with AdamW), epochs, batch size and ``amp``; each has its own config
    and seed (``config.seed``). After each of a member's epochs,
    ``callback(key, metrics)`` may stop it (a truthy return); a non-finite
    train loss, validation loss or metric ends it as diverged, without touching
    the other members. The members that end at an epoch go to ``end``
    together, as ``(key, result)`` with their :class:`~tuner.train.trainer.RunResult`
    (with ``test``, completed members' test-split loss and metric), then
    ``start`` refills their slots; the population shrinks when there is
    nothing left to start. Returns when no member is left. The caller's random
    state is left as it was.
    """
    entries = start(size)
    if not entries:
        return
    device = data.train.x.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings():
        for message in _QUIET:
            warnings.filterwarnings("ignore", message=message)
        population = _Population(task, data, entries)
        while population.members:
            ended = []
            for row, (member, metrics) in enumerate(zip(population.members, population.epoch())):
                result = member.result
                result.history.append(metrics)
                result.reason = divergence(metrics)
                if result.reason is not None:
                    result.status = "diverged"
                elif callback(member.key, metrics):
                    result.status = "stopped"
                elif metrics.epoch < member.config.epochs:
                    continue
                ended.append(row)
            complete = [row for row in ended if population.members[row].result.status == "complete"]
            if test and complete:
                tested = population.evaluate(data.test)
                for row in complete:
                    population.members[row].result.test_loss, population.members[row].result.test_metric = tested[row]
            if not ended:
                continue
            end([(population.members[row].key, population.members[row].result) for row in ended])
            entries = start(len(ended))
            for row, entry in zip(ended, entries):
                population.replace(row, *entry)
            left = ended[len(entries) :]
            if left:
                population.keep([row for row in range(len(population.members)) if row not in left])


# ---------------------------------------------------------------------------------------------
# Can a task be batched, and how many members fit


def why_not_batched(task: Task, data: Data) -> str | None:
    """None if ``task``'s model and loss train as a population; else why not, in a few words.

    Two members (seeds 0 and 1) take one stacked training step on a few
    training samples, then their stacked outputs in evaluation mode (a fresh
    stack of the same models) must equal each model's own (within float rounding): an operator without a
    batching rule under vmap, a loss that reads values on the host, or a
    model that keeps parameters ``functional_call`` cannot replace each show
    here.
    """
    if is_loop(task):
        return "it trains with its own loop (fit), which tuner cannot stack"
    if not data.in_memory:
        return "its data are Datasets read through DataLoaders (batched trials slice in-memory tensors)"
    device = data.device
    x, y = data.train.x[:CHECK_BATCH], data.train.y[:CHECK_BATCH]
    models = [seeded_model(task, seed, device) for seed in (0, 1)]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings():
        for message in _QUIET:
            warnings.filterwarnings("ignore", message=message)
        try:
            stacked = StackedModel(models, task.loss)
            stacked.train()
            stacked.losses(x.expand(2, *x.shape), y.expand(2, *y.shape)).sum().backward()
            stacked.grad()
            # A fresh stack for the comparison: the training step updated the stacked buffers (BatchNorm's
            # running statistics), not the models' own.
            fresh = StackedModel(models, task.loss)
            fresh.train(False)
            with torch.no_grad():
                outputs = fresh.shared(x)
                same = all(
                    torch.allclose(out, model.eval()(x), rtol=1e-4, atol=1e-5) for out, model in zip(outputs, models)
                )
        except Exception as err:  # whatever vmap or the task's code raise, the task runs one trial at a time
            return f"a stacked training step (vmap over its model and loss) raised {reason(err)}"
    if not same:
        return "its stacked outputs differ from each model's own (a module keeps parameters that functional_call cannot replace)"
    return None


def member_bytes(task: Task, data: Data, batch_size: int, amp: str, optimizers: Iterable[str]) -> int:
    """Memory one member needs, in bytes: parameters, gradients, optimizer state and update temporaries (two),
    the activations one training batch keeps for the backward pass (measured with one forward pass), its
    permuted copy of the training split, and its outputs over the validation split."""
    device = data.train.x.device
    model = seeded_model(task, 0, device)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    copies = 2 + max(len(VECTORIZED[name].states) for name in optimizers) + 2
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in own:
            saved.append(t.numel() * t.element_size())
        return t

    x, y = data.train.x[:batch_size], data.train.y[:batch_size]
    with (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        autocast(device, amp),
    ):
        output = model(x)
        task.loss(output, y)
    split = data.train.x.numel() * data.train.x.element_size() + data.train.y.numel() * data.train.y.element_size()
    evaluation = output[:1].numel() * output.element_size() * len(data.val)
    return params * copies + sum(saved) + output.numel() * output.element_size() + split + evaluation


def free_bytes(device: torch.device) -> int:
    """Free memory of ``device`` in bytes: ``torch.cuda.mem_get_info`` on CUDA, else the host's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def population_size(
    task: Task, data: Data, size: int, batch_size: int, amp: str, optimizers: Iterable[str], share: float = 1.0
) -> tuple[int, str | None]:
    """How many trials to train at once: ``size``, or fewer, with one line saying why (None when ``size`` stands).

    1 (one trial at a time) when the task cannot be batched (see
    :func:`why_not_batched`); fewer members when ``size`` of them would need
    more than :data:`MEMORY_SHARE` of the device's free memory (times
    ``share``, a worker's part of the machine).
    """
    if size == 1:
        return 1, None
    why = why_not_batched(task, data)
    if why is not None:
        return 1, f"batched trials: task {task.name!r} cannot be batched, so its trials run one at a time: {why}"
    device = data.train.x.device
    need, free = member_bytes(task, data, batch_size, amp, optimizers), free_bytes(device) * share
    fits = int(free * MEMORY_SHARE // need)
    if fits >= size:
        return size, None
    return max(1, fits), (
        f"batched trials: {size} at once would need about {_mib(need * size)} on {device}, "
        f"{MEMORY_SHARE:.0%} of its {_mib(free)} free allows {fits}: {'one at a time' if fits <= 1 else f'{fits} at once'}"
    )


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"
