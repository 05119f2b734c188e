"""The wide Adam and NAdam spaces contain momentum SGD and Nesterov SGD (Choi et al. 2019): not only on paper."""

from __future__ import annotations

import pytest

from tuner.config.experiment import Config
from tuner.config.files import shipped_dir
from tuner.config.spaces import load_space
from tuner.train.trainer import train

LR_SGD, MOMENTUM, EPS = 0.01, 0.9, 1.0e3


def inside(space_name: str, kwargs: dict) -> bool:
    space = load_space(shipped_dir("search_spaces") / f"{space_name}.yaml")
    values = kwargs | {"beta1": kwargs["betas"][0], "beta2": kwargs["betas"][1]}
    return all(p.low <= values[p.name] <= p.high for p in space.params if p.searched)


@pytest.mark.parametrize(
    ("space", "adaptive", "sgd"),
    [
        ("adam-wide", {"optimizer": "Adam"}, {"momentum": MOMENTUM}),
        ("nadam-wide", {"optimizer": "NAdam", "momentum_decay": 100.0}, {"momentum": MOMENTUM, "nesterov": True}),
    ],
)
def test_a_wide_space_holds_the_config_that_trains_as_momentum_sgd(quadratic, space, adaptive, sgd):
    task, data = quadratic

    def final(optimizer: str, kwargs: dict) -> float:
        config = Config(optimizer, kwargs, "constant", {}, "quadratic-deep", {}, 30, 128, 0, "loss")
        return train(task, data, config).history[-1].val_loss

    # With eps far above sqrt(v_hat), the step is lr / eps * m_hat: momentum SGD's at lr_sgd = lr * (1 - beta1) / eps.
    kwargs = {k: v for k, v in adaptive.items() if k != "optimizer"}
    kwargs |= {"lr": LR_SGD * EPS / (1 - MOMENTUM), "betas": (MOMENTUM, 0.999), "eps": EPS}
    assert inside(space, kwargs)
    target = final("SGD", {"lr": LR_SGD} | sgd)
    assert final(adaptive["optimizer"], kwargs) == pytest.approx(target, rel=1e-3)
    # The default eps does not: Adam at the same lr / eps ratio is another optimizer.
    assert final(adaptive["optimizer"], kwargs | {"lr": LR_SGD * 1e-8 / (1 - MOMENTUM), "eps": 1e-8}) != pytest.approx(
        target, rel=1e-2
    )
