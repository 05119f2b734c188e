"""``logistic-regression``: a convex model. Softmax regression of two classes on ill-conditioned Gaussian inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tuner.tasks.task import Classifier, Data, Split, generated


@dataclass
class LogisticRegression(Classifier):
    """Convex: logistic (softmax) regression of two classes on ill-conditioned Gaussian inputs.

    ``features`` Gaussian inputs whose scales span ``condition`` (log-spaced, 1 to 1/condition), labels drawn from
    a logistic model with fixed true weights; ``nn.Linear(features, 2)`` with cross-entropy: a convex loss. Accuracy;
    2,000/1,000/1,000 samples."""

    features: int = 20
    condition: float = 100.0
    name: str = "logistic-regression"
    metric: str = "accuracy"
    direction: str = "maximize"
    epochs: int = 10
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.features < 1 or not self.condition >= 1:
            raise ValueError(
                f"features={self.features}, condition={self.condition}: not allowed (features >= 1, condition >= 1)"
            )

    def data(self) -> Data:
        scales = torch.logspace(0, -torch.log10(torch.tensor(self.condition)).item(), self.features)
        weights = (
            torch.randn(self.features, generator=torch.Generator().manual_seed(49)) / scales
        )  # every feature matters

        def sample(n: int, generator: torch.Generator) -> Split:
            x = torch.randn(n, self.features, generator=generator) * scales
            p = torch.sigmoid(x @ weights)
            return Split(x, torch.bernoulli(p, generator=generator).long())

        return generated(sample, (2000, 1000, 1000), seed=50)

    def model(self) -> nn.Module:
        return nn.Linear(self.features, 2)
