"""The trainer: one function for tuning trials, the final evaluation and ``tuner train``.

It knows nothing of Optuna or MLflow. After every epoch it calls ``callback``
with the epoch's metrics; a truthy return stops the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from tuner.config.experiment import AMP, Config
from tuner.errors import UserError
from tuner.tasks import batches
from tuner.tasks.task import Data, Split, Task, is_loop
from tuner.train.results import EpochMetrics, RunResult, StepHook, divergence

# Evaluation runs in chunks of this many samples to bound activation memory.
EVAL_CHUNK = 8192
# glibc's mallopt parameters, and the freed memory a training process keeps for reuse (bytes).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BLOCKS_UP_TO = 32 * 2**20
KEEP_AT_MOST = 128 * 2**20


def steps_per_epoch(n_train: int, batch_size: int, drop_last: bool = False) -> int:
    """Optimizer steps in one epoch: the last, smaller batch is kept, or with ``drop_last`` dropped.

    Raises :class:`UserError` when ``drop_last`` leaves no full batch (``batch_size`` > ``n_train``).
    """
    if drop_last and batch_size > n_train:
        raise UserError(
            f"batch_size: {batch_size} is not allowed: the task drops the last partial batch and has {n_train} "
            f"training samples (allowed: 1 to {n_train})"
        )
    return n_train // batch_size if drop_last else math.ceil(n_train / batch_size)


def drops_last(task: Task) -> bool:
    """Whether an epoch of ``task`` drops its last partial batch: the task's optional ``drop_last`` (default False)."""
    return getattr(task, "drop_last", False) is True


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``amp`` is ``"bf16"``; a context that does nothing for ``"none"``."""
    if amp == "none":
        # Not torch.autocast(enabled=False): entering and leaving it around every step made digits-mlp's training a
        # half slower in wall-clock time (bench/overhead.py's "trainer beyond the bare loop").
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class Batches:
    """The batches of one training run, on ``data.device``, as ``(inputs, target)`` pairs.

    In-memory splits are sliced on the device, the training split in a new
    order every epoch drawn from ``seed`` (without the last partial batch when
    the task's ``drop_last`` says so). Dataset splits are read through
    DataLoaders (:func:`tuner.tasks.batches.loader`), the training one
    shuffled from ``seed``. ``val`` and ``test`` are what :func:`evaluate` takes.
    """

    def __init__(self, task: Task, data: Data, batch_size: int, seed: int) -> None:
        self.task, self.device, self.batch_size = task, data.device, batch_size
        self.source: Split | DataLoader
        self.val: Split | DataLoader
        self.test: Split | DataLoader
        tensors = data.tensors()
        if tensors is not None:
            self.source, self.val, self.test = tensors
            self.order = torch.Generator(device=self.device).manual_seed(seed)
            self.steps = steps_per_epoch(len(self.source), batch_size, drops_last(task))
        else:
            datasets = data.datasets()
            assert datasets is not None, "a task with its own loop (no splits) is never batched by tuner"
            train, val, test = datasets
            workers = data.workers
            self.source = batches.loader(
                task, train, batch_size, self.device, seed, train=True, workers=workers, drop_last=drops_last(task)
            )
            self.steps = len(self.source)
            self.val, self.test = (
                batches.loader(task, split, batch_size, self.device, seed, train=False, workers=workers)
                for split in (val, test)
            )

    def epoch(self) -> Iterator[tuple[Any, Any]]:
        """One epoch of training batches."""
        if isinstance(self.source, DataLoader):
            for batch in self.source:
                yield batches.on_device(self.task, batch, self.device)
            return
        x, y = self.source.x, self.source.y
        permutation = torch.randperm(len(x), generator=self.order, device=self.device)
        xs, ys = x[permutation], y[permutation]
        for start in range(0, self.steps * self.batch_size, self.batch_size):
            yield xs[start : start + self.batch_size], ys[start : start + self.batch_size]


def first_step(
    task: Task,
    data: Data,
    config: Config,
    around: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """One training step of ``config`` (forward, backward, optimizer step) on the first training batch of ``data``,
    on its device, inside ``around()`` (default: nothing); returns the model and the optimizer. Torch's random state
    is left as it was.

    The optimizer's state then holds everything it allocates (the report's state memory and peak memory read it).
    """
    device = data.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = task.model().to(device)
        feed = Batches(task, data, config.batch_size, config.seed)
        optimizer, _ = config.build(model.parameters(), steps_per_epoch=feed.steps)
        inputs, target = next(feed.epoch())
        with around():
            task.loss(batches.forward(model, inputs), target).backward()
            optimizer.step()
    return model, optimizer


@torch.inference_mode()
def evaluate(
    task: Task, model: torch.nn.Module, split: Split | Dataset | DataLoader, amp: str = "none"
) -> tuple[float, float]:
    """Loss and metric of ``model`` over a whole split, under the mixed precision ``amp`` (default none).

    ``split`` is an in-memory split (evaluated in chunks of :data:`EVAL_CHUNK`), a DataLoader, or a Dataset
    (read in batches of the task's ``batch_size``). The outputs and targets of all batches are joined
    along the batch dimension, and ``task.loss`` and ``task.score`` see them whole.
    """
    model.eval()
    device = next(model.parameters()).device
    if isinstance(split, Split):
        pairs: Iterable[tuple[Any, Any]] = (
            (split.x[i : i + EVAL_CHUNK], split.y[i : i + EVAL_CHUNK]) for i in range(0, len(split), EVAL_CHUNK)
        )
    else:
        reader = (
            split
            if isinstance(split, DataLoader)
            else batches.loader(task, split, task.batch_size, device, 0, train=False)
        )
        pairs = (batches.on_device(task, batch, device) for batch in reader)
    with autocast(device, amp):
        outputs, targets = zip(*((batches.forward(model, inputs), target) for inputs, target in pairs))
        output, target = _joined(outputs), _joined(targets)
        loss = task.loss(output, target).item()
    return loss, task.score(output, target)


def _joined(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def train(
    task: Task,
    data: Data,
    config: Config,
    *,
    seed: int | None = None,
    callback: Callable[[EpochMetrics], bool | None] | None = None,
    test: bool = False,
    step_hook: StepHook | None = None,
) -> RunResult:
    """Train ``task``'s model with ``config`` on ``data`` (already on its device).

    ``seed`` (default ``config.seed``) fixes the initial parameters and the
    batch order: CPU runs are bit-for-bit repeatable. With ``config.amp`` bf16 the
    forward pass and loss run under bf16 autocast (CUDA). A non-finite training
    loss, validation loss or metric ends the run as ``diverged``. With ``test``, the test split
    is evaluated at the end. ``step_hook(model, optimizer)`` runs before each optimizer step; a function it
    returns runs after that step (as :class:`tuner.measure.step_sizes.StepSizes` does). A task with its own loop
    runs its ``fit`` instead (:func:`tuner.train.loop.run_loop`), the hook around the steps of the optimizer that
    ``run.build`` returned.
    """
    seed = config.seed if seed is None else seed
    device = data.device
    if is_loop(task):
        from tuner.train.loop import run_loop  # only when a task brings its own loop

        return run_loop(task, config, device, seed, callback, test, step_hook)[0]
    result = RunResult()
    # The model's initialisation, dropout and augmentation use the global generators:
    # fork them so that the caller's random state is left as it was.
    with (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        batches.python_and_numpy_seeded(seed),
    ):
        torch.manual_seed(seed)
        model = task.model().to(device)
        feed = Batches(task, data, config.batch_size, seed)
        steps = feed.steps
        optimizer, scheduler = config.build(model.parameters(), steps_per_epoch=steps)
        started = time.perf_counter()
        for epoch in range(1, config.epochs + 1):
            model.train()
            loss_sum = torch.zeros((), device=device)
            for inputs, target in feed.epoch():
                with autocast(device, config.amp):
                    loss = task.loss(batches.forward(model, inputs), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                lr = optimizer.param_groups[0]["lr"]
                after = None if step_hook is None else step_hook(model, optimizer)
                optimizer.step()
                if after is not None:
                    after()
                if scheduler is not None:
                    scheduler.step()
                loss_sum += loss.detach()
            # One host sync per epoch: the divergence check waits until here.
            train_loss = loss_sum.item() / steps
            val_loss, val_metric = evaluate(task, model, feed.val, config.amp)
            metrics = EpochMetrics(epoch, train_loss, val_loss, val_metric, lr, time.perf_counter() - started)
            result.history.append(metrics)
            result.reason = divergence(metrics)
            if result.reason is not None:
                result.status = "diverged"
                return result
            if callback is not None and callback(metrics):
                result.status = "stopped"
                return result
        if test:
            result.test_loss, result.test_metric = evaluate(task, model, feed.test, config.amp)
    return result


def keep_freed_memory() -> None:
    """Have glibc's ``malloc`` keep the memory that CPU tensors free, for reuse, instead of handing it back to the OS.

    By default glibc returns freed blocks over 128 KiB (and the free top of its heap) to the OS at once, so every
    training step's activations come back as fresh pages that the kernel faults in and zeroes: 1,500-2,400 page
    faults a step of 16 stacked digits-cnn models, a quarter of the step's CPU time with two threads (measured here).
    Blocks of up to :data:`KEEP_BLOCKS_UP_TO` are then kept and reused, and up to :data:`KEEP_AT_MOST` of free heap;
    larger blocks are still handed back. The process's resident memory stays near its peak, as with PyTorch's own
    CUDA allocator. Called once by each command that trains; a no-op on other C libraries (macOS, musl).
    """
    if platform.libc_ver()[0] != "glibc":
        return
    mallopt = ctypes.CDLL(None).mallopt
    mallopt(M_MMAP_THRESHOLD, KEEP_BLOCKS_UP_TO)
    mallopt(M_TRIM_THRESHOLD, KEEP_AT_MOST)


def available_devices() -> list[str]:
    """The devices this machine has: ``cpu``, ``cuda:0``, ``cuda:1``, ... and ``mps`` where present."""
    return ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count())), *(["mps"] if _mps_available() else [])]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(spec: str) -> torch.device:
    """The device named ``spec``: ``auto`` (CUDA, else Apple MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or
    ``mps``. Raises :class:`UserError` for another name or a device that is not here."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device: {spec!r} is not allowed (auto, cpu, cuda, cuda:N, mps)")
    present = (
        device.type == "cpu"
        or (device.type == "cuda" and torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count())
        or (device.type == "mps" and _mps_available())
    )
    if not present:
        raise UserError(f"--device: {spec!r} is not available here (available: auto, {', '.join(available_devices())})")
    return device


def check_amp(amp: str, device: torch.device, where: str) -> None:
    """Raise :class:`UserError` naming ``where`` for a mixed precision ``amp`` other than ``none`` and ``bf16``, and
    for bf16 where it cannot run: it needs a CUDA device that supports it."""
    if amp not in AMP:
        raise UserError(f"{where}: {amp!r} is not allowed ({', '.join(AMP)})")
    if amp == "bf16" and device.type != "cuda":
        raise UserError(
            f"{where}: 'bf16' is not allowed on {device} (bf16 runs on CUDA devices only; use --amp none, or --device "
            "cuda)"
        )
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError(
            f"{where}: 'bf16' is not allowed: {torch.cuda.get_device_name(device)} does not support bfloat16 (use "
            "--amp none)"
        )
