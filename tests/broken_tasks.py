"""Task factories that each break one rule of the task contract (``task: broken_tasks:<name>`` in tests).

:class:`Tiny` is a valid task (linear regression, 16 samples per split); every
other factory changes one thing in it.
"""

from __future__ import annotations

import math
import multiprocessing
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tuner.tasks.check import CHECK_BATCH
from tuner.tasks.task import Data, Split, generated


@dataclass
class Tiny:
    """Linear regression of 4 features onto 1 target, mean squared error."""

    name: str = "tiny"
    metric: str = "mse"
    direction: str = "minimize"
    epochs: int = 2
    batch_size: int = 4

    def data(self) -> Data:
        def sample(n: int, generator: torch.Generator) -> Split:
            x = torch.randn(n, 4, generator=generator)
            return Split(x, x.sum(1, keepdim=True))

        return generated(sample, (16, 16, 16), seed=0)

    def model(self) -> nn.Module:
        return nn.Linear(4, 1)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target)

    def score(self, output: torch.Tensor, target: torch.Tensor) -> float:
        return F.mse_loss(output, target).item()


@dataclass
class ThreadsSeen(Tiny):
    """A valid task that appends ``<process name> <torch's CPU threads>`` to the file ``record`` whenever a model is built."""

    record: str = ""

    def model(self) -> nn.Module:
        with open(self.record, "a") as file:
            file.write(f"{multiprocessing.current_process().name} {torch.get_num_threads()}\n")
        return super().model()


def raises() -> Tiny:
    raise RuntimeError("no such dataset\nsecond line of the message")


def returns_none() -> None:
    return None


def bad_metric() -> Tiny:
    return Tiny(metric=3)


def bad_epochs() -> Tiny:
    return Tiny(epochs=0)


class DataRaises(Tiny):
    def data(self) -> Data:
        raise OSError("cannot read digits.csv")


class DataIsTuple(Tiny):
    def data(self) -> tuple:
        data = super().data()
        return data.train, data.val, data.test


class SplitIsTuple(Tiny):
    def data(self) -> Data:
        data = super().data()
        return Data((data.train.x, data.train.y), data.val, data.test)


class LengthsDiffer(Tiny):
    def data(self) -> Data:
        data = super().data()
        return Data(Split(data.train.x, data.train.y[:-1]), data.val, data.test)


class ShapesDoNotFit(Tiny):
    def model(self) -> nn.Module:
        return nn.Linear(3, 1)


class ModelIsAFunction(Tiny):
    def model(self):
        return torch.relu


class NoParameters(Tiny):
    def model(self) -> nn.Module:
        return nn.Identity()


class Transposed(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).T


class OutputNotBatchFirst(Tiny):
    def model(self) -> nn.Module:
        return Transposed(4, 1)


class LossNotScalar(Tiny):
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target, reduction="none")


class LossBroadcasts(Tiny):
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target.flatten())


class LossDetached(Tiny):
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output.detach(), target)


class LossNotFinite(Tiny):
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target) * math.inf


class ScoreIsTensor(Tiny):
    def score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target)


class ScoreNaN(Tiny):
    def score(self, output: torch.Tensor, target: torch.Tensor) -> float:
        return math.nan


class FailsInTraining(Tiny):
    """Passes the one-step check on a few samples, then fails every trial: its score cannot take a whole split."""

    def score(self, output: torch.Tensor, target: torch.Tensor) -> float:
        if len(output) > CHECK_BATCH:
            raise ValueError(f"score() takes at most {CHECK_BATCH} samples, got {len(output)}")
        return super().score(output, target)


class Samples(torch.utils.data.Dataset):
    """The samples of an in-memory split, one ``(x, y)`` pair at a time."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split.x[index], self.split.y[index]


class TinyDatasets(Tiny):
    """:class:`Tiny` with its splits as Datasets of ``(x, y)`` samples: a valid Dataset task."""

    def data(self) -> Data:
        data = super().data()
        return Data(Samples(data.train), Samples(data.val), Samples(data.test))


class DatasetEmpty(TinyDatasets):
    def data(self) -> Data:
        data = super().data()
        return Data(data.train, Samples(Split(torch.zeros(0, 4), torch.zeros(0, 1))), data.test)


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter([])


class DatasetIterable(TinyDatasets):
    def data(self) -> Data:
        data = super().data()
        return Data(Stream(), data.val, data.test)


class DatasetsMixedWithSplits(TinyDatasets):
    def data(self) -> Data:
        return Data(super().data().train, Tiny().data().val, Tiny().data().test)


class SamplerYieldsNothing(TinyDatasets):
    def sampler(self, dataset: torch.utils.data.Dataset, generator: torch.Generator) -> list[int]:
        return []


class CollateFails(TinyDatasets):
    def collate_fn(self, samples: list) -> tuple:
        raise KeyError("input_ids")


class BatchIsADict(TinyDatasets):
    """Batches are dicts, and the task has no ``unpack`` to say which part is the target."""

    def collate_fn(self, samples: list) -> dict:
        return {"x": torch.stack([x for x, _ in samples]), "y": torch.stack([y for _, y in samples])}


class ModelCannotTakeBatch(BatchIsADict):
    """``unpack`` hands the model a dict, which ``nn.Linear`` cannot take as keyword arguments."""

    def unpack(self, batch: dict) -> tuple[dict, torch.Tensor]:
        return {"features": batch["x"]}, batch["y"]


@dataclass
class TinyLoop:
    """:class:`Tiny` trained by a loop of its own (``fit``): a valid loop task."""

    name: str = "tiny-loop"
    metric: str = "mse"
    direction: str = "minimize"
    epochs: int = 2
    batch_size: int = 4

    def fit(self, run) -> dict[str, float] | None:
        tiny = Tiny()
        data, model = tiny.data().to(run.device), tiny.model().to(run.device)  # as a loop on a GPU must
        optimizer, scheduler = run.build(
            model.parameters(), steps_per_epoch=len(range(0, len(data.train), run.batch_size))
        )
        for epoch in range(1, run.epochs + 1):
            for start in range(0, len(data.train), run.batch_size):
                loss = tiny.loss(
                    model(data.train.x[start : start + run.batch_size]), data.train.y[start : start + run.batch_size]
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            with torch.no_grad():
                val = tiny.loss(model(data.val.x), data.val.y).item()
            if self.report(run, epoch, loss.item(), val):
                return None
        with torch.no_grad():
            test = tiny.loss(model(data.test.x), data.test.y).item()
        return self.tested(test)

    def report(self, run, epoch: int, train_loss: float, val_loss: float) -> bool:
        return run.report(epoch, train_loss, val_loss, val_loss)

    def tested(self, test_loss: float) -> dict[str, float] | None:
        return {"test_loss": test_loss, "test_metric": test_loss}


class LoopRaises(TinyLoop):
    def fit(self, run) -> None:
        raise RuntimeError("CUDA error: device-side assert triggered")


class LoopNeverReports(TinyLoop):
    def report(self, run, epoch: int, train_loss: float, val_loss: float) -> bool:
        return False


class LoopReportsOutOfOrder(TinyLoop):
    def report(self, run, epoch: int, train_loss: float, val_loss: float) -> bool:
        return run.report(epoch + 1, train_loss, val_loss, val_loss)


class LoopReportsNotANumber(TinyLoop):
    def report(self, run, epoch: int, train_loss: float, val_loss: float) -> bool:
        return run.report(epoch, train_loss, str(val_loss), val_loss)


class LoopReturnsNoTestValues(TinyLoop):
    def tested(self, test_loss: float) -> None:
        return None
