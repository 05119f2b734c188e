"""An example tuner task plugin: a small MLP learns y = sin(x) from noisy samples."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tuner.tasks.task import Data, Split, generated


@dataclass
class SineMLP:
    """Regression of sin(x) on [-pi, pi] with noise, MLP 1-hidden-hidden-1, mean squared error; the metric is the mean absolute error.

    Every field is a task argument (``task_args`` in an experiment); the
    factory is the class itself, named by the entry point in pyproject.toml.
    """

    hidden: int = 32
    noise: float = 0.1
    train_size: int = 512
    name: str = "sine-mlp"
    metric: str = "mae"
    direction: str = "minimize"
    epochs: int = 20
    batch_size: int = 32

    def data(self) -> Data:
        # A fixed seed of the task's own: every trial trains on the same data.
        def sample(n: int, generator: torch.Generator) -> Split:
            x = (2 * torch.rand(n, 1, generator=generator) - 1) * math.pi
            return Split(x, torch.sin(x) + self.noise * torch.randn(n, 1, generator=generator))

        return generated(sample, (self.train_size, self.train_size // 4, self.train_size // 4), seed=0)

    def model(self) -> nn.Module:
        # Initialised from torch's global generator, which tuner seeds for each trial.
        return nn.Sequential(
            nn.Linear(1, self.hidden),
            nn.Tanh(),
            nn.Linear(self.hidden, self.hidden),
            nn.Tanh(),
            nn.Linear(self.hidden, 1),
        )

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target)

    def score(self, output: torch.Tensor, target: torch.Tensor) -> float:
        return (output - target).abs().mean().item()
