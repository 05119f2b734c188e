"""``drifting-regression``: a non-stationary problem. Linear regression whose true weights rotate during training."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tuner.tasks.task import Data, Split, generated


class Drifting(nn.Module):
    """A linear model whose output is compared with a target that moves: ``x·w − x·(w*(t) − w*(0))``.

    The true weights ``w*(t) = a·cos(ωt) + b·sin(ωt)`` turn on a circle as training goes: ``t`` counts the
    training-mode forward passes (a buffer, saved with the model); evaluation uses the current ``w*(t)``. The
    targets themselves are ``x·w*(0)``: the task's loss (squared error) then measures the fit to the current weights.
    """

    a: torch.Tensor  # buffers: the circle's two vectors, shape (features,), and the training step count, a scalar
    b: torch.Tensor
    t: torch.Tensor

    def __init__(self, a: torch.Tensor, b: torch.Tensor, omega: float) -> None:
        super().__init__()
        self.linear = nn.Linear(len(a), 1, bias=False)
        self.register_buffer("a", a)
        self.register_buffer("b", b)
        self.register_buffer("t", torch.zeros((), dtype=torch.long))
        self.omega = omega

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.t += 1
        angle = self.omega * self.t
        shift = self.a * (torch.cos(angle) - 1) + self.b * torch.sin(angle)
        return (self.linear(x) - x @ shift.unsqueeze(1)).squeeze(1)


@dataclass
class DriftingRegression:
    """Non-stationary: a linear regression whose true weights turn on a circle during training.

    ``features`` Gaussian inputs, targets ``x·w*(t) + noise``, with ``w*`` turning a full circle every ``period``
    training steps (63 steps an epoch at batch size 32). Loss and metric: mean squared error against the current
    weights (the noise floor is ``noise²``). 2,000/500/500 samples."""

    features: int = 10
    period: int = 300
    noise: float = 0.1
    name: str = "drifting-regression"
    metric: str = "loss"
    direction: str = "minimize"
    epochs: int = 10
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.features < 1 or self.period < 1 or not self.noise >= 0:
            raise ValueError(
                f"features={self.features}, period={self.period}, noise={self.noise}: not allowed (>= 1, >= 1, >= 0)"
            )

    def circle(self) -> torch.Tensor:
        """The two vectors ``a``, ``b`` (shape (2, features)) of the true weights' circle; fixed, not the trial's
        seed."""
        return torch.randn(2, self.features, generator=torch.Generator().manual_seed(51))

    def data(self) -> Data:
        start = self.circle()[0]

        def sample(n: int, generator: torch.Generator) -> Split:
            x = torch.randn(n, self.features, generator=generator)
            return Split(x, x @ start + self.noise * torch.randn(n, generator=generator))

        return generated(sample, (2000, 500, 500), seed=52)

    def model(self) -> nn.Module:
        a, b = self.circle()
        return Drifting(a, b, 2 * math.pi / self.period)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output - target).square().mean()

    def score(self, output: torch.Tensor, target: torch.Tensor) -> float:
        return self.loss(output, target).item()
