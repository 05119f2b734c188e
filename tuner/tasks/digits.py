"""``digits-mlp``: scikit-learn's 8x8 digits, classified by a small MLP."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tuner.tasks.task import Classifier, Data, Split


def digits_splits(seed: int = 0) -> tuple[Split, Split, Split]:
    """Digits (1797 images of 64 pixels, 10 classes) split 60/20/20 into train, val and test, stratified by class
    with ``seed`` (default 0), standardised with the train statistics: inputs (N, 64) float32, targets (N,) long."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    mean, std = x_train.mean(0), x_train.std(0)
    std[std == 0] = 1.0  # pixels that are blank in every training image

    def split(xs: np.ndarray, ys: np.ndarray) -> Split:
        return Split(torch.tensor((xs - mean) / std, dtype=torch.float32), torch.tensor(ys, dtype=torch.long))

    return split(x_train, y_train), split(x_val, y_val), split(x_test, y_test)


@dataclass
class DigitsMLP(Classifier):
    """Digits 8x8 classification, MLP 64-hidden-10, cross-entropy, accuracy."""

    hidden: int = 128
    name: str = "digits-mlp"
    metric: str = "accuracy"
    direction: str = "maximize"
    epochs: int = 20
    batch_size: int = 64

    def data(self) -> Data:
        return Data(*digits_splits())

    def model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 10))
