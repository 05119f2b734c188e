"""Batched trials: up to K configurations of one model trained at once, as one population.

The members' parameters are stacked along a leading member dimension (:class:`tuner.batched.model.StackedModel`):
one forward and one backward pass serve every member, each seeing only its own parameters, batches and buffers,
and a vectorized optimizer (:mod:`tuner.batched.optimizers`) steps every member with its own hyperparameters,
learning-rate schedule and step count. Given identical gradients, the vectorized Adam, AdamW, SGD, RMSprop, NAdam,
RAdam, Adagrad and Adamax equal ``torch.optim``'s single-tensor path (the CPU default) bit for bit; whole trainings
differ from the same trial run alone only by rounding (the stacked forward and backward passes group sums
differently), which training amplifies.

:func:`train_batched` mirrors :func:`tuner.train.trainer.train` member by member: the
same seeding (a member's initial parameters are those of its trial run alone),
its own batch order, the same per-epoch metrics, divergence check, callback and
test evaluation. When a member ends, its slot is refilled with the next
configuration. Like the trainer, it knows nothing of Optuna or MLflow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import torch

from tuner.batched.model import StackedModel, seeded_model, splits, stacking
from tuner.batched.optimizers import VECTORIZED
from tuner.config.experiment import Config
from tuner.tasks.task import Data, Split, Task
from tuner.train.results import EpochMetrics, RunResult, divergence
from tuner.train.trainer import EVAL_CHUNK, autocast, drops_last, steps_per_epoch

Key = Hashable
"""The caller's handle of a member (an Optuna trial): given by ``start``, passed back to ``callback`` and ``end``."""


@dataclass(frozen=True)
class _Shared:
    """What every member of a population shares."""

    family: str  # the vectorized optimizer's class name (Adam and AdamW share one)
    epochs: int
    batch_size: int
    amp: str

    @classmethod
    def of(cls, config: Config) -> _Shared:
        return cls(VECTORIZED[config.optimizer].__name__, config.epochs, config.batch_size, config.amp)


@dataclass
class _Member:
    """A configuration being trained in one slot of the population."""

    key: Key
    config: Config
    order: torch.Generator
    started: float
    result: RunResult = field(default_factory=RunResult)


class _Population:
    """The state of :func:`train_batched`: members, stacked model and vectorized optimizer, row by row.

    Raises ValueError for configs that do not share their :class:`_Shared` settings, or data not in memory."""

    def __init__(self, task: Task, data: Data, entries: list[tuple[Key, Config]]) -> None:
        self.task = task
        self.train_split, self.val_split, self.test_split = splits(data)
        self.device = self.train_split.x.device
        first = entries[0][1]
        self.shared = _Shared.of(first)
        self.steps = steps_per_epoch(len(self.train_split), first.batch_size, drops_last(task))
        for _, config in entries:
            self._check(config)
        self.model = StackedModel([seeded_model(task, config.seed, self.device) for _, config in entries], task.loss)
        self.optimizer = VECTORIZED[first.optimizer](self.model.flat, [c for _, c in entries], self.steps)
        self.members = [self._member(key, config) for key, config in entries]

    def _check(self, config: Config) -> None:
        if _Shared.of(config) != self.shared:
            raise ValueError(f"a config with {_Shared.of(config)} cannot join a population of {self.shared}")

    def _member(self, key: Key, config: Config) -> _Member:
        return _Member(key, config, torch.Generator(device=self.device).manual_seed(config.seed), time.perf_counter())

    def replace(self, row: int, key: Key, config: Config) -> None:
        """Slot ``row`` starts ``config`` afresh: its own initial parameters, optimizer state, step count and batch
        order."""
        self._check(config)
        self.model.load(row, seeded_model(self.task, config.seed, self.device))
        self.optimizer.reset(row, config)
        self.members[row] = self._member(key, config)

    def keep(self, rows: list[int]) -> None:
        """Keep only the members in slots ``rows``, in that order."""
        self.model.keep(rows)
        self.optimizer.keep(rows, self.model.flat)
        self.members = [self.members[row] for row in rows]

    def epoch(self) -> list[EpochMetrics]:
        """One epoch of every member, each on its own batch order; then each member's metrics (its epochs counted
        apart)."""
        x, y = self.train_split.x, self.train_split.y
        n, batch_size = len(x), self.shared.batch_size
        self.model.train()
        permutations = torch.stack(
            [torch.randperm(n, generator=m.order, device=self.device) for m in self.members]
        ).flatten()
        xs = x.index_select(0, permutations).view(len(self.members), n, *x.shape[1:])
        ys = y.index_select(0, permutations).view(len(self.members), n, *y.shape[1:])
        loss_sum = torch.zeros(len(self.members), device=self.device)
        self.optimizer.plan(self.steps)
        for start in range(0, self.steps * batch_size, batch_size):
            with autocast(self.device, self.shared.amp):
                losses = self.model.losses(xs[:, start : start + batch_size], ys[:, start : start + batch_size])
            # The sum of the members' losses gives every member its own gradient.
            losses.sum().backward()
            self.optimizer.step(self.model.grad())
            loss_sum += losses.detach()
        # One host sync per epoch, as in the trainer.
        train_losses = [total / self.steps for total in loss_sum.tolist()]
        validation = self.evaluate(self.val_split)
        now = time.perf_counter()
        return [
            EpochMetrics(
                len(m.result.history) + 1, train_loss, val_loss, val_metric, self.optimizer.lr(row), now - m.started
            )
            for row, (m, train_loss, (val_loss, val_metric)) in enumerate(zip(self.members, train_losses, validation))
        ]

    @torch.inference_mode()
    def evaluate(self, split: Split) -> list[tuple[float, float]]:
        """Every member's loss and metric over a whole split, as :func:`tuner.train.trainer.evaluate` computes them."""
        self.model.train(False)
        with autocast(self.device, self.shared.amp):
            output = torch.cat(
                [self.model.shared(split.x[i : i + EVAL_CHUNK]) for i in range(0, len(split), EVAL_CHUNK)], dim=1
            )
            losses = [self.task.loss(out, split.y).item() for out in output]
        return [(loss, self.task.score(out, split.y)) for loss, out in zip(losses, output)]


def train_batched(
    task: Task,
    data: Data,
    population: int,
    start: Callable[[int], list[tuple[Key, Config]]],
    callback: Callable[[Key, EpochMetrics], bool | None],
    end: Callable[[list[tuple[Key, RunResult]]], None],
    *,
    test: bool = False,
) -> None:
    """Train configs ``population`` at a time as one population, like :func:`tuner.train.trainer.train` trains one.

    ``start(n)`` gives up to ``n`` next members, ``(key, config)`` each, or
    fewer (none) when there are no more for now; it fills the population at
    first and the slots that members leave. Members share the optimizer family
    (Adam with AdamW), epochs, batch size and ``amp``; each has its own config
    and seed (``config.seed``). After each of a member's epochs,
    ``callback(key, metrics)`` may stop it (a truthy return); a non-finite
    train loss, validation loss or metric ends it as diverged, without touching
    the other members. The members that end at an epoch go to ``end``
    together, as ``(key, result)`` with their :class:`~tuner.train.trainer.RunResult`
    (with ``test``, completed members' test-split loss and metric), then
    ``start`` refills their slots; the population shrinks when there is
    nothing left to start. Returns when no member is left. The caller's random
    state is left as it was.

    Raises ValueError when a config cannot join the others (another family, epochs, batch size or ``amp``), and
    whatever the task's code or the callbacks raise.
    """
    entries = start(population)
    if not entries:
        return
    with stacking(splits(data)[0].x.device):
        current = _Population(task, data, entries)
        while current.members:
            ended = []
            for row, (member, metrics) in enumerate(zip(current.members, current.epoch())):
                result = member.result
                result.history.append(metrics)
                result.reason = divergence(metrics)
                if result.reason is not None:
                    result.status = "diverged"
                elif callback(member.key, metrics):
                    result.status = "stopped"
                elif metrics.epoch < member.config.epochs:
                    continue
                ended.append(row)
            complete = [row for row in ended if current.members[row].result.status == "complete"]
            if test and complete:
                tested = current.evaluate(current.test_split)
                for row in complete:
                    current.members[row].result.test_loss, current.members[row].result.test_metric = tested[row]
            if not ended:
                continue
            end([(current.members[row].key, current.members[row].result) for row in ended])
            entries = start(len(ended))
            for row, entry in zip(ended, entries):
                current.replace(row, *entry)
            left = ended[len(entries) :]
            if left:
                current.keep([row for row in range(len(current.members)) if row not in left])
