"""``quadratic-deep``: DeepOBS's noisy quadratic problem ``quadratic_deep``, the same instance.

Source: Schneider, Balles & Hennig, "DeepOBS: A Deep Learning Optimizer Benchmark
Suite", ICLR 2019, and its code (``deepobs/tensorflow/testproblems/quadratic_deep.py``,
``deepobs/pytorch/testproblems/quadratic_deep.py`` of DeepOBS 1.1,
``deepobs/pytorch/datasets/quadratic.py``). Every number below is drawn from
numpy's legacy ``RandomState``, whose streams numpy keeps stable across versions,
in DeepOBS's order, so the Hessian and the data are DeepOBS's to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tuner.tasks.task import Data, Split

DIM = 100
# DeepOBS's seeds: one generator draws the eigenvalues and then the rotation; one per data split.
HESSIAN_SEED, TRAIN_SEED, TEST_SEED, VAL_SEED = 42, 42, 43, 44
N_SMALL, N_LARGE = 90, 10  # eigenvalues from U(0, 1) and from U(30, 60)
DEEPOBS_BATCH = 128


def haar_rotation(dim: int, rng: np.random.RandomState) -> np.ndarray:
    """A ``(dim, dim)`` rotation drawn from the Haar measure by the subgroup algorithm, as DeepOBS draws it.

    Diaconis & Shahshahani, "The subgroup algorithm for generating uniform random
    variables", Prob. Eng. Inf. Sci. 1 (1987): a random 2-D rotation (one uniform
    angle), then for d = 2 .. dim-1 the rotation embedded in d+1 dimensions times
    the Householder reflection that takes e1 to a uniform point on the sphere
    (d+1 normal draws). DeepOBS returns the negated product; so does this.
    """
    angle = 2 * np.pi * rng.uniform()
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    for d in range(2, dim):
        v = rng.normal(size=d + 1)
        v /= np.linalg.norm(v)
        u = -v
        u[0] += 1.0  # e1 - v
        u /= np.linalg.norm(u)
        embedded = np.eye(d + 1)
        embedded[1:, 1:] = rotation
        rotation = embedded - 2 * np.outer(u, u @ embedded)
    return -rotation


def deepobs_hessian() -> tuple[np.ndarray, np.ndarray]:
    """DeepOBS's eigenvalues ``(100,)`` and Hessian ``Q = Rᵀ diag(eigenvalues) R`` ``(100, 100)``, float64.

    One ``RandomState(42)`` draws 90 eigenvalues from U(0, 1), 10 from U(30, 60),
    then the rotation R (:func:`haar_rotation`), in that order (the first test
    problem DeepOBS builds in a process).
    """
    rng = np.random.RandomState(HESSIAN_SEED)
    eigenvalues = np.concatenate([rng.uniform(0.0, 1.0, N_SMALL), rng.uniform(30.0, 60.0, N_LARGE)])
    rotation = haar_rotation(DIM, rng)
    return eigenvalues, rotation.T @ np.diag(eigenvalues) @ rotation


def deepobs_samples(seed: int, n: int, noise: float) -> torch.Tensor:
    """``(n, 100)`` float32 draws from N(0, noise²) of ``RandomState(seed)``, as DeepOBS's data set draws them."""
    return torch.from_numpy(np.random.RandomState(seed).normal(0.0, noise, (n, DIM)).astype(np.float32))


class Theta(nn.Module):
    """The parameters theta, started at 1 as in DeepOBS; the output ignores the batch."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.expand_as(x)


@dataclass
class QuadraticDeep:
    """DeepOBS's quadratic_deep: 1/2 (theta-x)^T Q (theta-x) in 100 dimensions, Q with 90 small and 10 large
    eigenvalues.

    The Hessian, the training data (``RandomState(42)``), the validation data
    (44) and the test data (43), x ~ N(0, ``noise``² I), are DeepOBS's. Training
    shuffles the ``train_size`` samples every epoch and drops the last partial
    batch (``drop_last``: 7 steps of 128 an epoch). DeepOBS's evaluation loaders
    drop it too: the validation and test splits are the first ``eval_size``
    samples, by default the full batches of 128 (896 of 1000). The metric is
    the loss itself (lower is better).

    Raises ``ValueError`` unless 1 <= ``eval_size`` <= ``train_size`` (DeepOBS
    draws each split with ``train_size`` samples).
    """

    noise: float = 0.6
    train_size: int = 1000
    eval_size: int | None = None
    name: str = "quadratic-deep"
    metric: str = "loss"
    direction: str = "minimize"
    epochs: int = 100
    batch_size: int = DEEPOBS_BATCH
    drop_last: bool = True

    def __post_init__(self) -> None:
        if self.eval_size is None:
            self.eval_size = self.train_size // DEEPOBS_BATCH * DEEPOBS_BATCH or self.train_size
        if not 1 <= self.eval_size <= self.train_size:
            raise ValueError(
                f"train_size={self.train_size}, eval_size={self.eval_size} are not allowed (1 <= eval_size <= "
                "train_size)"
            )
        self.eigenvalues, hessian = deepobs_hessian()
        self.hessian = torch.from_numpy(hessian).float()  # DeepOBS casts it to float32 too

    def data(self) -> Data:
        eval_size = self.eval_size
        assert eval_size is not None, "__post_init__ sets it"

        def split(seed: int, n: int) -> Split:
            x = deepobs_samples(seed, self.train_size, self.noise)[:n]
            return Split(x, x)

        return Data(split(TRAIN_SEED, self.train_size), split(VAL_SEED, eval_size), split(TEST_SEED, eval_size))

    def model(self) -> nn.Module:
        return Theta(DIM)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = output - target
        if self.hessian.device != diff.device:  # moved once, not at every step
            self.hessian = self.hessian.to(diff.device)
        return 0.5 * ((diff @ self.hessian) * diff).sum(1).mean()

    def score(self, output: torch.Tensor, target: torch.Tensor) -> float:
        return self.loss(output, target).item()
