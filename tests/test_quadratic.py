"""``quadratic-deep`` is DeepOBS's quadratic_deep: the same Hessian, data, batches and epoch length."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tuner.config.experiment import Config
from tuner.errors import UserError
from tuner.tasks.loading import load_task
from tuner.tasks.quadratic import QuadraticDeep
from tuner.train.trainer import evaluate, steps_per_epoch, train


def published_hessian() -> tuple[np.ndarray, np.ndarray]:
    """DeepOBS 1.1's construction as published (deepobs/tensorflow/testproblems/quadratic_deep.py), written out apart
    from the task's: one RandomState(42) for the eigenvalues, then the subgroup-algorithm rotation with stacked blocks."""
    rng = np.random.RandomState(42)
    eigenvalues = np.concatenate((rng.uniform(0.0, 1.0, 90), rng.uniform(30.0, 60.0, 10)), axis=0)
    t = 2 * np.pi * rng.uniform()
    r = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    for d in range(2, 100):
        v = rng.normal(size=(d + 1, 1))
        v = v / np.sqrt(v.T.dot(v))
        e = np.concatenate((np.array([[1.0]]), np.zeros((d, 1))), axis=0)
        x = (e - v) / np.sqrt((e - v).T.dot(e - v))
        block = np.vstack([np.hstack([[[1.0]], np.zeros((1, d))]), np.hstack([np.zeros((d, 1)), r])])
        r = block - 2 * np.outer(x, x.T.dot(block))
    r = -r
    return eigenvalues, r.T @ np.diag(eigenvalues) @ r


def published_loss(hessian: np.ndarray, theta: np.ndarray, x: np.ndarray) -> float:
    """DeepOBS's evaluation: the mean over full batches of 128 of 0.5 (theta - x)ᵀ Q (theta - x), in float64."""
    batches = len(x) // 128
    q = theta - x[: batches * 128].astype(np.float64)
    return float(0.5 * np.einsum("ij,jk,ik->i", q, hessian, q).mean())


@pytest.fixture(scope="module")
def published():
    return published_hessian()


def test_the_hessian_is_deepobs_s(quadratic, published):
    task, _ = quadratic
    eigenvalues, hessian = published
    np.testing.assert_array_equal(task.eigenvalues, eigenvalues)
    assert (eigenvalues[:90] < 1).all() and (eigenvalues[90:] > 30).all()
    np.testing.assert_allclose(task.hessian.double().numpy(), hessian, rtol=0, atol=1e-5)  # float32, as DeepOBS's
    np.testing.assert_allclose(np.linalg.eigvalsh(hessian), np.sort(eigenvalues), rtol=0, atol=1e-9)


def test_the_data_and_the_untrained_and_optimal_losses_are_deepobs_s(quadratic, published):
    task, data = quadratic
    _, hessian = published
    for split, seed in ((data.train, 42), (data.val, 44), (data.test, 43)):
        drawn = np.float32(np.random.RandomState(seed).normal(0.0, 0.6, (1000, 100)))
        np.testing.assert_array_equal(split.x.numpy(), drawn[: len(split)])
    assert (len(data.train), len(data.val), len(data.test)) == (1000, 896, 896)

    test = np.float32(np.random.RandomState(43).normal(0.0, 0.6, (1000, 100)))
    untrained, _ = evaluate(task, task.model(), data.test)
    assert untrained == pytest.approx(published_loss(hessian, np.ones(100), test), rel=1e-5)
    assert untrained == pytest.approx(353.45, abs=0.01)  # the "about 354"

    # The floor: theta at the training data's mean; DeepOBS's tuned baselines end near 87.05 on the test loss.
    mean = data.train.x.double().mean(0).numpy()
    model = task.model()
    model.theta.data = torch.from_numpy(mean).float()
    floor, _ = evaluate(task, model, data.test)
    assert floor == pytest.approx(published_loss(hessian, mean, test), rel=1e-5)
    assert floor == pytest.approx(87.05, abs=0.01)


class Counting(QuadraticDeep):
    """The task, recording the size of every training batch its loss sees."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.batches: list[int] = []

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.batches.append(len(target))
        return super().loss(output, target)


def test_an_epoch_is_seven_full_batches_of_128():
    task = Counting()
    config = Config(
        optimizer="SGD",
        optimizer_kwargs={"lr": 0.01},
        schedule="constant",
        schedule_params={},
        task="quadratic-deep",
        task_args={},
        epochs=2,
        batch_size=128,
        seed=0,
        objective="loss",
    )
    result = train(task, task.data(), config)
    assert task.batches == [128] * 14
    assert result.status == "complete" and result.history[-1].val_loss < result.history[0].val_loss
    assert steps_per_epoch(1000, 128, drop_last=True) == 7 and steps_per_epoch(1000, 128) == 8


def test_a_batch_larger_than_the_training_set_is_refused_when_the_last_batch_is_dropped():
    with pytest.raises(
        UserError, match=r"batch_size: 2000 is not allowed: .* 1000 training samples \(allowed: 1 to 1000\)"
    ):
        steps_per_epoch(1000, 2000, drop_last=True)
    assert load_task("quadratic-deep", {"train_size": 256}).data().train.x.shape == (256, 100)
