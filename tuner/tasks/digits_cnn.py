"""``digits-cnn``: scikit-learn's 8x8 digits, classified by a small convolutional network."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tuner.tasks.digits import digits_splits
from tuner.tasks.task import Classifier, Data, Split


@dataclass
class DigitsCNN(Classifier):
    """Digits 8x8 classification, CNN conv3x3-pool-conv3x3-pool-linear, cross-entropy, accuracy.

    The images are those of ``digits-mlp`` (same split and standardisation) as
    ``(1, 8, 8)`` tensors. ``channels`` is the width of the first convolution;
    the second has twice as many.
    """

    channels: int = 16
    name: str = "digits-cnn"
    metric: str = "accuracy"
    direction: str = "maximize"
    epochs: int = 20
    batch_size: int = 64

    def data(self) -> Data:
        def image(split: Split) -> Split:
            return Split(split.x.view(-1, 1, 8, 8), split.y)

        train, val, test = (image(split) for split in digits_splits())
        return Data(train, val, test)

    def model(self) -> nn.Module:
        c = self.channels
        return nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
            nn.Flatten(),
            nn.Linear(2 * c * 2 * 2, 10),
        )
