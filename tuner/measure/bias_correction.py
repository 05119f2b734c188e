"""Adam's bias correction, ablated: torch's Adam update with its two correction factors removable.

torch's single-tensor Adam (``torch/optim/adam.py``, ``_single_tensor_adam``, the CPU default) updates, at step t::

    m_t = lerp(m_{t-1}, g, 1 − β1)            v_t = β2·v_{t-1} + (1 − β2)·g²
    θ  −= lr / c1 · m_t / (sqrt(v_t) / sqrt(c2) + ε),    c1 = 1 − β1^t,  c2 = 1 − β2^t

:class:`AdamCorrections` is that update, operation for operation, with ``c1`` (``correct_first=False``) and
``c2`` (``correct_second=False``) replaceable by 1. With both on it equals ``torch.optim.Adam`` bit for bit on
the CPU (tested). Without them, ``m_1 = (1 − β1)·g`` and ``v_1 = (1 − β2)·g²``: the first step is
``(1 − β1)/sqrt(1 − β2)`` times Adam's where ε is negligible (3.2 with the defaults 0.9, 0.999; larger as
β2 → 1: the initial steps that Kingma & Ba's section 3 corrects), and ``1 − β1`` times Adam's where ε dominates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import torch

from tuner.config.experiment import Config
from tuner.measure import step_sizes
from tuner.tasks.task import Data, Task, is_loop
from tuner.train import optim
from tuner.train.results import columns
from tuner.train.trainer import train

# The optimizers whose best config is ablated: torch's Adam family with its bias correction.
ABLATED = ("Adam", "AdamW")


class AdamCorrections(torch.optim.Optimizer):
    """``torch.optim.Adam`` (``decoupled_weight_decay=True``: AdamW) with its bias corrections removable.

    Arguments as torch's (``lr`` >= 0, ``betas`` each in [0, 1), ``eps`` >= 0, ``weight_decay`` >= 0, ``amsgrad``,
    ``decoupled_weight_decay``), plus ``correct_first`` and ``correct_second`` (default True: torch's update).
    Raises ValueError for a value out of range. Dense gradients only, no ``maximize``, float learning rates.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        decoupled_weight_decay: bool = False,
        correct_first: bool = True,
        correct_second: bool = True,
    ) -> None:
        if not lr >= 0 or not eps >= 0 or not weight_decay >= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(
                f"lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}: out of range "
                "(lr, eps, weight_decay >= 0; betas in [0, 1))"
            )
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "decoupled_weight_decay": decoupled_weight_decay,
            "correct_first": correct_first,
            "correct_second": correct_second,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        """One update of every parameter with a gradient (torch's order of operations)."""
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if not state:  # as torch: a float32 step count on the CPU, zeroed moments
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                if decay != 0:
                    if group["decoupled_weight_decay"]:
                        param.mul_(1 - lr * decay)
                    else:
                        grad = grad.add(param, alpha=decay)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = state["step"].item()
                first = 1 - beta1**step if group["correct_first"] else 1.0
                second = (1 - beta2**step) ** 0.5 if group["correct_second"] else 1.0
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                    exp_avg_sq = state["max_exp_avg_sq"]
                denom = (exp_avg_sq.sqrt() / second).add_(eps)
                param.addcdiv_(exp_avg, denom, value=-(lr / first))


@dataclasses.dataclass(frozen=True)
class _Uncorrected(Config):
    """A config of torch's Adam or AdamW trained with :class:`AdamCorrections` and both corrections off."""

    def build(self, params: Any, *, steps_per_epoch: int):
        optimizer = AdamCorrections(
            params,
            **self.optimizer_kwargs,
            decoupled_weight_decay=self.optimizer == "AdamW",
            correct_first=False,
            correct_second=False,
        )
        return optimizer, optim.build_scheduler(
            self.schedule, self.schedule_params, optimizer, self.epochs * steps_per_epoch
        )


def uncorrected(config: Config) -> Config:
    """``config`` (of Adam or AdamW, see :data:`ABLATED`) with its optimizer's bias corrections off."""
    return _Uncorrected(**{f.name: getattr(config, f.name) for f in dataclasses.fields(Config)})


def ablate(task: Task, data: Data, config: Config, seeds: list[int]) -> dict[str, Any] | None:
    """Re-train ``config`` on ``seeds`` with bias correction off, recording step sizes; None unless its optimizer is one
    of :data:`ABLATED` or the task has its own loop. The record: ``seeds``, ``status``, ``history`` (per seed, as the
    final runs store theirs), ``step_sizes`` (per seed, :meth:`tuner.measure.step_sizes.StepSizes.result`)."""
    if config.optimizer not in ABLATED or is_loop(task):  # a task's own loop: no step sizes to compare
        return None
    ablated, runs, probes = uncorrected(config), [], []
    for seed in seeds:
        probe = step_sizes.probe(task, data, ablated)
        assert probe is not None  # only a task with its own loop has none, and it was left out above
        probes.append(probe)
        runs.append(train(task, data, ablated, seed=seed, step_hook=probe))
    return {
        "seeds": seeds,
        "status": [run.status for run in runs],
        "history": [columns(run.history) for run in runs],
        "step_sizes": [probe.result() for probe in probes],
    }


def first_step_ratio(record: dict[str, Any], step: int = 1) -> float:
    """The median over tensors of the median ``|Δθ|/|g|`` at optimizer ``step`` of a step-size record (NaN if not
    recorded): how far the step moved a parameter per unit of gradient."""
    if step not in record["steps"]:
        return math.nan
    at = record["steps"].index(step)
    median = record["percentiles"].index(50)
    medians = sorted(rows[at][median] for rows in record["ratio"].values() if math.isfinite(rows[at][median]))
    return medians[len(medians) // 2] if medians else math.nan
