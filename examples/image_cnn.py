"""A Dataset task: a small CNN on scikit-learn's 8x8 digits, with random crop and flip augmentation every epoch.

Tune it from the repository's root (the task is named by its dotted path)::

    python -m tuner study examples/image-cnn.yaml
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from tuner.tasks.task import Classifier, Data


class RandomCropFlip:
    """Pad an image by ``padding`` pixels, crop it back to its size at a random place, and flip it left-right
    with probability one half. Draws from torch's generator: the DataLoader seeds it in each worker."""

    def __init__(self, padding: int = 1) -> None:
        self.padding = padding

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        padded = F.pad(image, [self.padding] * 4)
        top, left = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()
        image = padded[..., top : top + height, left : left + width]
        return image.flip(-1) if torch.rand(()) < 0.5 else image


class Digits(Dataset):
    """Images ``(1, 8, 8)`` scaled to [0, 1] and their labels, each image passed through ``transform`` when read."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: RandomCropFlip | None = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.labels[index]


@dataclass
class AugmentedDigits(Classifier):
    """Digits 8x8 as a Dataset with random crop and flip on the training split; CNN, cross-entropy, accuracy."""

    channels: int = 16
    padding: int = 1
    num_workers: int = 0
    name: str = "augmented-digits"
    metric: str = "accuracy"
    direction: str = "maximize"
    epochs: int = 20
    batch_size: int = 64

    def data(self) -> Data:
        x, y = load_digits(return_X_y=True)
        images = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16
        labels = torch.tensor(y)
        # The split is fixed (random_state), so every trial sees the same images.
        train, rest = train_test_split(range(len(labels)), test_size=0.4, stratify=labels, random_state=0)
        val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=0)
        return Data(
            Digits(images[train], labels[train], RandomCropFlip(self.padding)),
            Digits(images[val], labels[val]),
            Digits(images[test], labels[test]),
        )

    def model(self) -> nn.Module:
        c = self.channels
        return nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * c * 2 * 2, 10),
        )
