"""``quadratic-deep``: DeepOBS's 100-dimensional noisy quadratic problem."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tuner.tasks import Data, Split, generated


class Theta(nn.Module):
    """The parameters theta, started at 1 as in DeepOBS; the output ignores the batch."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.expand_as(x)


@dataclass
class QuadraticDeep:
    """DeepOBS noisy quadratic: 1/2 (theta-x)^T Q (theta-x), Q with 90 small and 10 large eigenvalues.

    Q = R^T D R with R a random rotation, 90 eigenvalues from U(0, 1) and 10
    from U(30, 60) (fixed seed); x ~ N(0, noise^2 I) per sample. The metric is
    the loss itself (lower is better).
    """

    dim: int = 100
    noise: float = 0.6
    train_size: int = 1000
    name: str = "quadratic-deep"
    metric: str = "loss"
    direction: str = "minimize"
    epochs: int = 20
    batch_size: int = 128

    def __post_init__(self) -> None:
        if self.dim < 11:
            raise ValueError(f"dim={self.dim} is not allowed (>= 11: 10 large eigenvalues and at least one small)")
        generator = torch.Generator().manual_seed(42)
        n_large = 10
        eigenvalues = torch.cat([
            torch.rand(self.dim - n_large, generator=generator, dtype=torch.float64),
            30 + 30 * torch.rand(n_large, generator=generator, dtype=torch.float64),
        ])
        rotation, _ = torch.linalg.qr(torch.randn(self.dim, self.dim, generator=generator, dtype=torch.float64))
        self.hessian = (rotation.T @ torch.diag(eigenvalues) @ rotation).float()

    def data(self) -> Data:
        def sample(n: int, generator: torch.Generator) -> Split:
            x = self.noise * torch.randn(n, self.dim, generator=generator)
            return Split(x, x)

        return generated(sample, (self.train_size,) * 3, seed=43)

    def model(self) -> nn.Module:
        return Theta(self.dim)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = output - target
        if self.hessian.device != diff.device:  # moved once, not at every step
            self.hessian = self.hessian.to(diff.device)
        return 0.5 * ((diff @ self.hessian) * diff).sum(1).mean()

    def score(self, output: torch.Tensor, target: torch.Tensor) -> float:
        return self.loss(output, target).item()
