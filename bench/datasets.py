"""Is a Dataset task as fast under tuner's trainer as the same DataLoader loop written by hand?

The data: scikit-learn's digits (1078 training images of 64 pixels, as in
``digits-mlp``), as a map-style Dataset read one sample at a time
(``__getitem__``), with the same MLP. Three sides, each trained with Adam
(lr=1e-3, constant) for ``--epochs`` epochs with a validation loss and
accuracy per epoch, the rounds interleaved and the fastest of ``--rounds``
kept per side:

- **tuner**: ``tuner.train.trainer.train`` on the Dataset task (its DataLoaders);
- **hand**: the same work by hand: seed, model, ``DataLoader(shuffle=True,
  generator=...)``, the loop, and the validation split through a DataLoader;
- **tensors**: ``tuner.train.trainer.train`` on the same data as in-memory tensors
  (``digits-mlp``): batches are slices on the device, no DataLoader at all.

Run from the repository root::

    .venv/bin/python bench/datasets.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from tuner.config.experiment import Config
from tuner.tasks.check import load_data
from tuner.tasks.digits import DigitsMLP
from tuner.tasks.loading import load_task
from tuner.tasks.task import Data, Split
from tuner.train.trainer import train


class Samples(Dataset):
    """The samples of an in-memory split, read one at a time as a user's Dataset reads them."""

    def __init__(self, split: Split) -> None:
        self.x, self.y = split.x, split.y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


class DigitsDataset(DigitsMLP):
    """``digits-mlp`` with its splits as Datasets."""

    def data(self) -> Data:
        data = super().data()
        return Data(Samples(data.train), Samples(data.val), Samples(data.test))


def by_hand(task: DigitsMLP, data: Data, epochs: int, seed: int) -> float:
    """The DataLoader loop a user writes; returns the last validation accuracy."""
    torch.manual_seed(seed)
    model = task.model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_loader = DataLoader(
        data.train, batch_size=task.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    val_loader = DataLoader(data.val, batch_size=task.batch_size)
    for _ in range(epochs):
        model.train()
        total = torch.zeros(())
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        model.eval()
        with torch.inference_mode():
            outputs, targets = zip(*((model(x), y) for x, y in val_loader))
            output, target = torch.cat(outputs), torch.cat(targets)
            val_loss, accuracy = (
                F.cross_entropy(output, target).item(),
                (output.argmax(1) == target).float().mean().item(),
            )
        _ = total.item() / len(train_loader), val_loss
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    dataset_task, tensor_task = DigitsDataset(), load_task("digits-mlp")
    datasets, tensors = load_data(dataset_task, cpu), load_data(tensor_task, cpu)
    config = Config(
        "Adam", {"lr": 1e-3}, "constant", {}, "digits-mlp", {}, args.epochs, dataset_task.batch_size, 0, "loss"
    )
    sides = {
        "tuner (Dataset task)": lambda: train(dataset_task, datasets, config).history[-1].val_metric,
        "hand (same DataLoader loop)": lambda: by_hand(dataset_task, datasets, args.epochs, 0),
        "tensors (in-memory task)": lambda: train(tensor_task, tensors, config).history[-1].val_metric,
    }
    best = dict.fromkeys(sides, float("inf"))
    accuracy = {}
    for side in sides.values():  # warm-up: first-call imports (torch's optimizer step pulls in torch._dynamo)
        side()
    for _ in range(args.rounds):
        for name, side in sides.items():
            started = time.perf_counter()
            accuracy[name] = side()
            best[name] = min(best[name], time.perf_counter() - started)
    hand = best["hand (same DataLoader loop)"]
    print(
        f"digits, MLP, {args.epochs} epochs x {len(datasets.train)} samples, batch {config.batch_size}, "
        f"torch threads {torch.get_num_threads()}, fastest of {args.rounds} rounds"
    )
    for name, seconds in best.items():
        print(f"{name:30s} {seconds:7.3f} s   {seconds / hand:5.2f} x hand   val accuracy {accuracy[name]:.4f}")


if __name__ == "__main__":
    main()
