"""A task with its own training loop: gradient clipping and gradient accumulation, written as a PyTorch user writes it.

tuner hands ``fit`` a run with the trial's config, device and seed; the loop
builds the trial's optimizer and scheduler with ``run.build`` and reports each
epoch with ``run.report``, which says when to stop (pruned or diverged).
Tune it from the repository's root::

    python -m tuner study examples/own-loop.yaml
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from tuner.train.loop import Run


def digits(split: str) -> TensorDataset:
    """scikit-learn's digits as (64 pixels in [0, 1], label), split 60/20/20 with a fixed seed."""
    x, y = load_digits(return_X_y=True)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=0)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=0)
    xs, ys = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}[split]
    return TensorDataset(torch.tensor(xs / 16, dtype=torch.float32), torch.tensor(ys))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``loader``."""
    model.eval()
    loss, correct, count = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    return loss / count, correct / count


@dataclass
class ClippedAccumulated:
    """Digits MLP trained by its own loop: gradients accumulated over ``accumulate`` batches and clipped to ``max_norm``."""

    hidden: int = 64
    accumulate: int = 2
    max_norm: float = 1.0
    name: str = "own-loop-digits"
    metric: str = "accuracy"
    direction: str = "maximize"
    epochs: int = 10
    batch_size: int = 32

    def fit(self, run: Run) -> dict[str, float] | None:
        device = run.device
        generator = torch.Generator().manual_seed(run.seed)
        train_loader = DataLoader(digits("train"), batch_size=run.batch_size, shuffle=True, generator=generator)
        val_loader = DataLoader(digits("val"), batch_size=256)
        model = nn.Sequential(nn.Linear(64, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 10)).to(device)
        steps_per_epoch = -(-len(train_loader) // self.accumulate)  # optimizer steps, one per `accumulate` batches
        optimizer, scheduler = run.build(model.named_parameters(), steps_per_epoch=steps_per_epoch)

        for epoch in range(1, run.epochs + 1):
            model.train()
            total = 0.0
            optimizer.zero_grad()
            for i, (x, y) in enumerate(train_loader):
                x, y = x.to(device), y.to(device)
                loss = F.cross_entropy(model(x), y)
                (loss / self.accumulate).backward()
                total += loss.item()
                if (i + 1) % self.accumulate == 0 or i + 1 == len(train_loader):
                    nn.utils.clip_grad_norm_(model.parameters(), self.max_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                    if scheduler is not None:
                        scheduler.step()
            val_loss, val_accuracy = evaluate(model, val_loader, device)
            if run.report(epoch, total / len(train_loader), val_loss, val_accuracy):
                return None  # pruned or diverged

        if run.test:  # the final evaluation and `tuner train` ask for the test values
            test_loss, test_accuracy = evaluate(model, DataLoader(digits("test"), batch_size=256), device)
            return {"test_loss": test_loss, "test_metric": test_accuracy}
        return None
