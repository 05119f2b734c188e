"""The Adam family, vectorized: ``torch.optim.Adam`` and ``AdamW``, ``NAdam``, ``RAdam`` and ``Adamax``.

Each equals ``torch.optim``'s single-tensor path (the CPU default) bit for bit, given identical gradients
(see :class:`tuner.batched.optimizer.VectorizedOptimizer`).
"""

from __future__ import annotations

from typing import Any

import torch

from tuner.batched.optimizer import Hyperparameters, Numbers, VectorizedOptimizer, l2_decayed, with_defaults


def adam_family(name: str, kwargs: dict[str, Any]) -> tuple[dict[str, float], dict[str, bool]]:
    """The values and flags that Adam, AdamW, NAdam, RAdam and Adamax share: betas, eps, weight decay, L2 or
    decoupled."""
    k = with_defaults(name, kwargs)
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


def decoupled_decay(member: Hyperparameters, lr: float) -> float:
    """``1 - lr * weight_decay`` for a member with decoupled weight decay; 1.0 (the parameter bit for bit) where
    torch skips it."""
    return 1 - lr * member.values["weight_decay"] if member.flags["decoupled"] else 1.0


def moments(p: torch.Tensor, g: torch.Tensor, state: Numbers, h: Numbers, any_: dict[str, bool]) -> torch.Tensor:
    """Adam's, NAdam's and RAdam's common start: weight decay (L2 into the gradient, or decoupled on the parameters),
    then the first and second moments ``exp_avg`` and ``exp_avg_sq`` updated in place; returns the gradient used
    (``[K, P]``)."""
    g = l2_decayed(p, g, h, any_)
    if any_["decoupled"]:
        p.mul_(h["decay"])
    state["exp_avg"].lerp_(g, h["lerp"])
    state["exp_avg_sq"].mul_(h["beta2"]).addcmul_(g * h["one_minus_beta2"], g)
    return g


class VectorizedAdam(VectorizedOptimizer):
    """``torch.optim.Adam`` and ``AdamW`` (decoupled weight decay), amsgrad included."""

    optimizers = ("Adam", "AdamW")
    states = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    value_names = ("lerp", "beta2", "one_minus_beta2", "eps", "weight_decay")
    flag_names = ("l2", "amsgrad", "decoupled")
    factor_names = ("neg_step_size", "bias_correction2_sqrt", "decay")

    def hyperparameters(self, name: str, kwargs: dict[str, Any]) -> tuple[dict[str, float], dict[str, bool]]:
        values, flags = adam_family(name, kwargs)
        return values, flags | {"amsgrad": bool(with_defaults(name, kwargs)["amsgrad"])}

    def factors(self, member: Hyperparameters, lr: float, step: int) -> tuple[float, ...]:
        v = member.values
        bias_correction1 = 1 - v["beta1"] ** step
        bias_correction2 = 1 - v["beta2"] ** step
        return -(lr / bias_correction1), bias_correction2**0.5, decoupled_decay(member, lr)

    def update(self, p: torch.Tensor, g: torch.Tensor, state: Numbers, h: Numbers, any_: dict[str, bool]) -> None:
        g = moments(p, g, state, h, any_)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        second = exp_avg_sq
        if any_["amsgrad"]:
            torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            second = torch.where(h["amsgrad"], state["max_exp_avg_sq"], exp_avg_sq)
        denom = (second.sqrt() / h["bias_correction2_sqrt"]).add_(h["eps"])
        p.addcdiv_(exp_avg * h["neg_step_size"], denom)


class VectorizedNAdam(VectorizedOptimizer):
    """``torch.optim.NAdam`` (Dozat 2016): momentum decay, L2 or decoupled weight decay."""

    optimizers = ("NAdam",)
    states = ("exp_avg", "exp_avg_sq")
    value_names = ("lerp", "beta2", "one_minus_beta2", "eps", "weight_decay")
    flag_names = ("l2", "decoupled")
    factor_names = ("bias_correction2", "grad_value", "avg_value", "decay")

    def hyperparameters(self, name: str, kwargs: dict[str, Any]) -> tuple[dict[str, float], dict[str, bool]]:
        values, flags = adam_family(name, kwargs)
        return values | {"momentum_decay": with_defaults(name, kwargs)["momentum_decay"]}, flags

    def factors(self, member: Hyperparameters, lr: float, step: int) -> tuple[float, ...]:
        v = member.values
        mu = v["beta1"] * (1.0 - 0.5 * (0.96 ** (step * v["momentum_decay"])))
        mu_next = v["beta1"] * (1.0 - 0.5 * (0.96 ** ((step + 1) * v["momentum_decay"])))
        # torch keeps the product of the mu's in a float32 tensor: multiplied there, read back as a Python float.
        product = member.running.setdefault("mu_product", torch.ones((), dtype=torch.float32)).mul_(mu).item()
        grad_value = -lr * (1.0 - mu) / (1.0 - product)
        avg_value = (-lr * mu_next) / (1.0 - product * mu_next)
        return 1 - v["beta2"] ** step, grad_value, avg_value, decoupled_decay(member, lr)

    def update(self, p: torch.Tensor, g: torch.Tensor, state: Numbers, h: Numbers, any_: dict[str, bool]) -> None:
        g = moments(p, g, state, h, any_)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        denom = exp_avg_sq.div(h["bias_correction2"]).sqrt().add_(h["eps"])
        p.addcdiv_(g * h["grad_value"], denom)
        p.addcdiv_(exp_avg * h["avg_value"], denom)


class VectorizedRAdam(VectorizedOptimizer):
    """``torch.optim.RAdam`` (Liu et al. 2020): the adaptive step only once the variance is tractable (rho_t > 5)."""

    optimizers = ("RAdam",)
    states = ("exp_avg", "exp_avg_sq")
    value_names = ("lerp", "beta2", "one_minus_beta2", "eps", "weight_decay")
    flag_names = ("l2", "decoupled")
    factor_names = ("bias_correction1", "lr", "bias_correction2_sqrt", "rect", "rectified", "decay")

    def hyperparameters(self, name: str, kwargs: dict[str, Any]) -> tuple[dict[str, float], dict[str, bool]]:
        return adam_family(name, kwargs)

    def factors(self, member: Hyperparameters, lr: float, step: int) -> tuple[float, ...]:
        v = member.values
        bias_correction2 = 1 - v["beta2"] ** step
        rho_inf = 2 / (1 - v["beta2"]) - 1
        rho_t = rho_inf - 2 * step * (v["beta2"] ** step) / bias_correction2
        rectified = rho_t > 5.0
        rect = (
            ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5 if rectified else 0.0
        )
        return 1 - v["beta1"] ** step, lr, bias_correction2**0.5, rect, float(rectified), decoupled_decay(member, lr)

    def update(self, p: torch.Tensor, g: torch.Tensor, state: Numbers, h: Numbers, any_: dict[str, bool]) -> None:
        g = moments(p, g, state, h, any_)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        plain = exp_avg / h["bias_correction1"] * h["lr"]
        # torch's `bias_correction2**0.5 / denom` is `denom.reciprocal() * bias_correction2**0.5`.
        adaptive = exp_avg_sq.sqrt().add_(h["eps"]).reciprocal_() * h["bias_correction2_sqrt"]
        p.sub_(torch.where(h["rectified"] > 0, plain * adaptive * h["rect"], plain))


class VectorizedAdamax(VectorizedOptimizer):
    """``torch.optim.Adamax`` (Kingma & Ba 2015, the infinity norm) with L2 weight decay."""

    optimizers = ("Adamax",)
    states = ("exp_avg", "exp_inf")
    value_names = ("lerp", "beta2", "eps", "weight_decay")
    flag_names = ("l2",)
    factor_names = ("neg_clr",)

    def hyperparameters(self, name: str, kwargs: dict[str, Any]) -> tuple[dict[str, float], dict[str, bool]]:
        values, flags = adam_family(name, kwargs)
        return values, {"l2": flags["l2"]}

    def factors(self, member: Hyperparameters, lr: float, step: int) -> tuple[float, ...]:
        return (-(lr / (1 - member.values["beta1"] ** step)),)

    def update(self, p: torch.Tensor, g: torch.Tensor, state: Numbers, h: Numbers, any_: dict[str, bool]) -> None:
        g = l2_decayed(p, g, h, any_)
        exp_avg, exp_inf = state["exp_avg"], state["exp_inf"]
        exp_avg.lerp_(g, h["lerp"])
        torch.maximum(exp_inf.mul_(h["beta2"]), g.abs().add_(h["eps"]), out=exp_inf)
        p.addcdiv_(exp_avg * h["neg_clr"], exp_inf)
