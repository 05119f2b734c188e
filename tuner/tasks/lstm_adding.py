"""``lstm-adding``: an LSTM on the adding problem (Hochreiter & Schmidhuber 1997)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tuner.tasks.task import Data, Split, generated

# |prediction - target| below this counts as solved (Hochreiter & Schmidhuber's criterion).
TOLERANCE = 0.04


def adding_sample(n: int, length: int, generator: torch.Generator) -> Split:
    """``n`` sequences of ``length`` (value, marker) pairs; the target is the sum of the two marked values.

    Values are uniform in [0, 1); one marker falls in the first half of the
    sequence, the other in the second half. Inputs ``(n, length, 2)``, targets ``(n,)``.
    """
    values = torch.rand(n, length, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, length, (n,), generator=generator)
    markers = torch.zeros(n, length)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    return Split(torch.stack([values, markers], dim=-1), (values * markers).sum(1))


class LastStepLSTM(nn.Module):
    """An LSTM over the sequence; a linear read-out of its last hidden state gives one number per sequence."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(x)
        return self.out(states[:, -1]).squeeze(-1)


@dataclass
class LSTMAdding:
    """Adding problem, LSTM with a linear read-out, mean squared error; accuracy is |error| < 0.04.

    Sequences of ``length`` steps (at least 2); ``train_size`` training
    sequences, a quarter as many each for validation and test (generated from
    a fixed seed). Always predicting 1.0, the mean, gives an MSE of 1/6 (0.167).
    """

    length: int = 20
    hidden: int = 32
    train_size: int = 2000
    name: str = "lstm-adding"
    metric: str = "accuracy"
    direction: str = "maximize"
    epochs: int = 20
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.length < 2:
            raise ValueError(f"length={self.length} is not allowed (>= 2: one marker in each half)")

    def data(self) -> Data:
        def sample(n: int, generator: torch.Generator) -> Split:
            return adding_sample(n, self.length, generator)

        held_out = max(1, self.train_size // 4)
        return generated(sample, (self.train_size, held_out, held_out), seed=44)

    def model(self) -> nn.Module:
        return LastStepLSTM(self.hidden)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target)

    def score(self, output: torch.Tensor, target: torch.Tensor) -> float:
        return ((output - target).abs() < TOLERANCE).float().mean().item()
