"""Each rule of the task contract (tuner.tasks.contract.check_task) fires on a task that breaks it, and only there.

Every task here is the valid ``broken_tasks.Tiny`` with one thing changed. The rule that the loaded data is on the
device cannot break on the CPU (loading moves it there); ``data()`` differing between calls and an epoch that does
not lower the validation loss are shown in test_tasks.py.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from broken_tasks import Tiny
from torch import nn

from tuner.errors import UserError
from tuner.tasks.contract import check_task


class InitialisedByItself(Tiny):
    """Draws its initial weights from a generator of its own, not torch's seeded one."""

    def __init__(self) -> None:
        super().__init__()
        self.seeds = itertools.count()

    def model(self) -> nn.Module:
        model = nn.Linear(4, 1)
        with torch.no_grad():
            model.weight.normal_(generator=torch.Generator().manual_seed(next(self.seeds)))
        return model


class ExplodesOnceTrained(Tiny):
    """A model fine as initialised (and through the one step of the check before a study) whose output overflows once
    Adam has moved its weights by a few steps."""

    def model(self) -> nn.Module:
        return Exploding()


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.register_buffer("start", self.linear.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * torch.exp(1e4 * (self.linear.weight - self.start).abs().sum())


class NanOnTheTestSplit(Tiny):
    def score(self, output: torch.Tensor, target: torch.Tensor) -> float:
        return float("nan") if torch.equal(target, self.data().test.y) else super().score(output, target)


class UnseededNoise(Tiny):
    """Adds noise from Python's own unseeded generator to the loss: two runs with one seed differ."""

    def __init__(self) -> None:
        super().__init__()
        self.noise = random.Random()

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().loss(output, target) + self.noise.random() * 1e-3


def test_the_valid_task_keeps_the_contract():
    check_task(Tiny())


@pytest.mark.parametrize(
    ("task", "rule"),
    [
        (InitialisedByItself(), r"model\(\) built under the same torch seed gives different initial parameters"),
        (ExplodesOnceTrained(), r"one epoch of Adam \(lr=0.001\): diverged at epoch 1"),
        (NanOnTheTestSplit(), r"test loss [-0-9.e]+ or test metric nan is not finite"),
        (UnseededNoise(), r"two runs with the same seed differ on the CPU"),
    ],
    ids=["model-not-seeded", "diverges", "test-metric-not-finite", "not-repeatable"],
)
def test_each_rule_fires_on_a_task_that_breaks_it(task, rule):
    with pytest.raises(UserError, match=f"^task 'tiny' breaks the contract: {rule}"):
        check_task(task)
