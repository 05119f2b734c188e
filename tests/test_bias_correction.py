"""Adam's bias correction ablated: torch's update bit for bit with the factors on, and the re-trained final seeds."""

from __future__ import annotations

import math

import pytest
import torch

from tuner.config.experiment import Config
from tuner.measure.bias_correction import AdamCorrections, ablate, first_step_ratio, uncorrected
from tuner.measure.step_sizes import StepSizes
from tuner.tasks.check import load_data
from tuner.tasks.loading import load_task
from tuner.train.trainer import steps_per_epoch, train


def model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"weight_decay": 0.1},
        {"amsgrad": True, "betas": (0.5, 0.9), "eps": 1e-3},
        {"weight_decay": 0.01, "decoupled_weight_decay": True},
    ],
)
def test_with_both_corrections_it_is_torchs_adam_bit_for_bit(kwargs):
    torch.manual_seed(0)
    ours, theirs = model(), model()
    theirs.load_state_dict(ours.state_dict())
    optimizers = (
        AdamCorrections(ours.parameters(), lr=0.01, **kwargs),
        torch.optim.Adam(theirs.parameters(), lr=0.01, **kwargs),
    )
    for _ in range(25):
        x = torch.randn(16, 5)
        for net, optimizer in zip((ours, theirs), optimizers):
            optimizer.zero_grad()
            net(x).square().mean().backward()
            optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))
    assert all(
        torch.equal(a, b)
        for a, b in zip(optimizers[0].state.values(), optimizers[1].state.values())
        for a, b in zip(a.values(), b.values())
    )


def test_without_corrections_the_first_step_is_uncorrected_moments():
    lr, beta1, beta2 = 0.1, 0.9, 0.999
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    optimizer = AdamCorrections(
        [param], lr=lr, betas=(beta1, beta2), eps=0.0, correct_first=False, correct_second=False
    )
    param.grad = torch.tensor([0.5, -4.0], dtype=torch.float64)
    optimizer.step()
    # m_1 = (1-β1) g, v_1 = (1-β2) g²: a step of lr (1-β1)/sqrt(1-β2) sign(g), 3.16 times Adam's lr.
    step = lr * (1 - beta1) / math.sqrt(1 - beta2)
    assert param.tolist() == pytest.approx([1.0 - step, 2.0 + step], rel=1e-12)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"betas=\(1.0, 0.9\)"):
        AdamCorrections([torch.zeros(1, requires_grad=True)], betas=(1.0, 0.9))


def test_the_best_config_is_retrained_without_correction_on_every_final_seed():
    task = load_task("digits-mlp")
    data = load_data(task, torch.device("cpu"))
    config = Config(
        "Adam", {"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-12}, "constant", {}, "digits-mlp", {}, 1, 256, 0
    )
    assert ablate(task, data, Config("SGD", {"lr": 0.1}, "constant", {}, "digits-mlp", {}, 1, 256, 0), [1]) is None
    off = ablate(task, data, config, [1, 2])
    assert off["seeds"] == [1, 2] and off["status"] == ["complete"] * 2 and len(off["history"][0]["val_loss"]) == 1
    assert uncorrected(config).optimizer_kwargs == config.optimizer_kwargs  # the same config, another update
    on = StepSizes(steps_per_epoch(len(data.train), config.batch_size), config.epochs)
    train(task, data, config, seed=1, step_hook=on)
    # The same first gradient (seed 1): without correction each element moves (1-β1)/sqrt(1-β2) = 3.16 times as far.
    assert first_step_ratio(off["step_sizes"][0]) / first_step_ratio(on.result()) == pytest.approx(
        0.1 / math.sqrt(0.001), rel=1e-4
    )
    assert math.isnan(first_step_ratio(off["step_sizes"][0], step=10**6))
