"""``rosenbrock``: the 2-D Rosenbrock function, a curved valley whose optimizer trajectories are easy to follow."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tuner.tasks.task import Data, Split, generated


class Point(nn.Module):
    """The parameters (x, y), started at ``start``; the output is the point shifted by each sample's noise."""

    def __init__(self, start: tuple[float, float]) -> None:
        super().__init__()
        self.point = nn.Parameter(torch.tensor(start))

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.point + noise


def rosenbrock(points: torch.Tensor) -> torch.Tensor:
    """(1 - x)^2 + 100 (y - x^2)^2 of each row (x, y); 0 at the minimum (1, 1)."""
    x, y = points[..., 0], points[..., 1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


@dataclass
class Rosenbrock:
    """Rosenbrock's function (1-x)^2 + 100 (y-x^2)^2 from (-1.2, 1); the metric is the distance to the minimum (1, 1).

    Each sample is a perturbation of the point drawn from N(0, noise^2 I): the
    loss is the mean of the function over the batch's perturbed points, so
    ``noise`` > 0 makes the gradients stochastic. With the default 0 every
    step is an exact gradient step. Each split has ``size`` samples: 10 steps
    an epoch at the default batch size of 8.
    """

    noise: float = 0.0
    size: int = 80
    start: tuple[float, float] = (-1.2, 1.0)
    name: str = "rosenbrock"
    metric: str = "distance"
    direction: str = "minimize"
    epochs: int = 100
    batch_size: int = 8

    def __post_init__(self) -> None:
        if len(self.start) != 2:
            raise ValueError(f"start={self.start!r} is not allowed (a point [x, y])")

    def data(self) -> Data:
        def sample(n: int, generator: torch.Generator) -> Split:
            noise = self.noise * torch.randn(n, 2, generator=generator)
            return Split(noise, noise)  # the target is the perturbation: output - target is the point itself

        return generated(sample, (self.size,) * 3, seed=46)

    def model(self) -> nn.Module:
        return Point((float(self.start[0]), float(self.start[1])))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return rosenbrock(output).mean()

    def score(self, output: torch.Tensor, target: torch.Tensor) -> float:
        return torch.linalg.vector_norm(output[0] - target[0] - 1.0).item()
