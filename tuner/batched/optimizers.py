"""``torch.optim.SGD``, ``RMSprop`` and ``Adagrad``, vectorized, and :data:`VECTORIZED`: the family of every
``torch.optim`` class a population can train (the Adam family is in :mod:`tuner.batched.adam`).

Each equals ``torch.optim``'s single-tensor path (the CPU default) bit for bit, given identical gradients
(see :class:`tuner.batched.optimizer.VectorizedOptimizer`).
"""

from __future__ import annotations

from typing import Any

import torch

from tuner.batched.adam import VectorizedAdam, VectorizedAdamax, VectorizedNAdam, VectorizedRAdam
from tuner.batched.optimizer import Hyperparameters, Numbers, VectorizedOptimizer, l2_decayed, with_defaults


class VectorizedSGD(VectorizedOptimizer):
    """``torch.optim.SGD`` with momentum, dampening, nesterov and weight decay."""

    optimizers = ("SGD",)
    states = ("momentum_buffer",)
    value_names = ("momentum", "one_minus_dampening", "weight_decay")
    flag_names = ("l2", "momentum_on", "nesterov")
    factor_names = ("neg_lr", "first")

    def hyperparameters(self, name: str, kwargs: dict[str, Any]) -> tuple[dict[str, float], dict[str, bool]]:
        k = with_defaults(name, kwargs)
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

    def factors(self, member: Hyperparameters, lr: float, step: int) -> tuple[float, ...]:
        return -lr, float(step == 1)

    def update(self, p: torch.Tensor, g: torch.Tensor, state: Numbers, h: Numbers, any_: dict[str, bool]) -> None:
        g = l2_decayed(p, g, h, any_)
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

    optimizers = ("RMSprop",)
    states = ("square_avg", "grad_avg", "momentum_buffer")
    value_names = ("alpha", "one_minus_alpha", "eps", "weight_decay", "momentum")
    flag_names = ("l2", "centered", "momentum_on")
    factor_names = ("neg_lr",)

    def hyperparameters(self, name: str, kwargs: dict[str, Any]) -> tuple[dict[str, float], dict[str, bool]]:
        k = with_defaults(name, kwargs)
        values = {
            "alpha": k["alpha"],
            "one_minus_alpha": 1 - k["alpha"],
            "eps": k["eps"],
            "weight_decay": k["weight_decay"],
            "momentum": k["momentum"],
        }
        return values, {"l2": k["weight_decay"] != 0, "centered": bool(k["centered"]), "momentum_on": k["momentum"] > 0}

    def factors(self, member: Hyperparameters, lr: float, step: int) -> tuple[float, ...]:
        return (-lr,)

    def update(self, p: torch.Tensor, g: torch.Tensor, state: Numbers, h: Numbers, any_: dict[str, bool]) -> None:
        g = l2_decayed(p, g, h, any_)
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


class VectorizedAdagrad(VectorizedOptimizer):
    """``torch.optim.Adagrad`` (Duchi et al. 2011) with lr decay, an initial accumulator and L2 weight decay."""

    optimizers = ("Adagrad",)
    states = ("sum",)
    value_names = ("eps", "weight_decay")
    flag_names = ("l2",)
    factor_names = ("neg_clr",)

    def hyperparameters(self, name: str, kwargs: dict[str, Any]) -> tuple[dict[str, float], dict[str, bool]]:
        k = with_defaults(name, kwargs)
        values = {
            "eps": k["eps"],
            "weight_decay": k["weight_decay"],
            "lr_decay": k["lr_decay"],
            "initial": k["initial_accumulator_value"],
        }
        return values, {"l2": k["weight_decay"] != 0}

    def initial(self, member: Hyperparameters) -> dict[str, float]:
        return {"sum": member.values["initial"]}

    def factors(self, member: Hyperparameters, lr: float, step: int) -> tuple[float, ...]:
        return (-(lr / (1 + (step - 1) * member.values["lr_decay"])),)

    def update(self, p: torch.Tensor, g: torch.Tensor, state: Numbers, h: Numbers, any_: dict[str, bool]) -> None:
        g = l2_decayed(p, g, h, any_)
        std = state["sum"].addcmul_(g, g).sqrt().add_(h["eps"])
        p.addcdiv_(g * h["neg_clr"], std)


VECTORIZED: dict[str, type[VectorizedOptimizer]] = {
    name: family
    for family in (
        VectorizedAdam,
        VectorizedSGD,
        VectorizedRMSprop,
        VectorizedNAdam,
        VectorizedRAdam,
        VectorizedAdagrad,
        VectorizedAdamax,
    )
    for name in family.optimizers
}
"""The vectorized family of each ``torch.optim`` class a population can train, by the class's name."""
