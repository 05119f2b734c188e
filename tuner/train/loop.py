"""Tasks with their own training loop: the :class:`Run` a user's ``fit(run)`` receives, and how tuner drives it.

A loop task has ``name``, ``metric``, ``direction``, ``epochs`` and
``batch_size`` like any task, and instead of ``data``, ``model``, ``loss`` and
``score`` one method ``fit(run)`` (the shape of a Ray Tune function trainable
or an Optuna objective)::

    def fit(self, run: tuner.train.loop.Run) -> dict[str, float] | None:
        model = Net().to(run.device)                      # torch is seeded with run.seed
        optimizer, scheduler = run.build(model.parameters(), steps_per_epoch=len(loader))
        for epoch in range(1, run.epochs + 1):
            ...                                           # the user's own loop
            if run.report(epoch, train_loss, val_loss, val_metric):
                return None                               # pruned or diverged: stop
        if run.test:
            return {"test_loss": ..., "test_metric": ...}

It knows nothing of Optuna or MLflow: ``callback`` is the trainer's.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from tuner.config.experiment import Config
from tuner.plural import counted
from tuner.tasks.batches import python_and_numpy_seeded
from tuner.train.results import EpochMetrics, RunResult, StepHook, divergence

# The learning rate of Adam in the one epoch of a loop task's fit that checks it before any study.
LOOP_CHECK_LR = 1e-3


class ReportError(ValueError):
    """A loop task broke the reporting rules (order, values, test values)."""


class Run:
    """What one run of a loop task gets: its config, device, seed, optimizer and a per-epoch report.

    ``config`` is the trial's :class:`tuner.config.experiment.Config` (``epochs``,
    ``batch_size``, ``task_args`` ...); ``test`` says whether tuner needs the
    test values (the final evaluation, ``tuner train``) or not (a tuning trial).
    """

    def __init__(
        self,
        config: Config,
        device: torch.device,
        seed: int,
        test: bool,
        callback: Callable[[EpochMetrics], bool | None] | None,
        step_hook: StepHook | None = None,
    ) -> None:
        self.config, self.device, self.seed, self.test = config, device, seed, test
        self.epochs, self.batch_size = config.epochs, config.batch_size
        self.optimizer: torch.optim.Optimizer | None = None
        self.result = RunResult()
        self._callback, self._step_hook = callback, step_hook
        self._started = time.perf_counter()

    def build(self, params: Iterable[Any], steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
        """``(optimizer, scheduler_or_None)``: the trial's exact ``torch.optim`` optimizer for ``params`` and its
        learning-rate scheduler over ``epochs * steps_per_epoch`` steps (step it after every optimizer step).

        ``params`` as torch's optimizers take them: ``model.parameters()``, or ``model.named_parameters()`` to name
        the tensors in the step-size record (else ``param0``, ``param1``, ... in the optimizer's order). Raises
        ``ValueError`` for ``steps_per_epoch`` < 1."""
        self.optimizer, scheduler = self.config.build(params, steps_per_epoch=steps_per_epoch)
        if self._step_hook is not None:
            _hook_steps(self.optimizer, self._step_hook, steps_per_epoch)
        return self.optimizer, scheduler

    def report(self, epoch: int, train_loss: float, val_loss: float, val_metric: float) -> bool:
        """Record epoch ``epoch`` (1, 2, ... in order); True when the run is to stop: pruned, or diverged (a value
        that is not finite). Raises :class:`ReportError` for an epoch out of order or a value that is not a number."""
        if self.result.status != "complete":
            raise ReportError(
                f"report(epoch={epoch}) after an earlier report said stop (allowed: return when report() is True)"
            )
        expected = len(self.result.history) + 1
        if isinstance(epoch, bool) or epoch != expected or epoch > self.epochs:
            raise ReportError(
                f"report(epoch={epoch!r}) out of order (allowed: epochs 1, 2, ... {self.epochs}; expected {expected})"
            )
        train_value, val_value, metric_value = (
            _number(name, value)
            for name, value in (("train_loss", train_loss), ("val_loss", val_loss), ("val_metric", val_metric))
        )
        lr = self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else math.nan
        seconds = time.perf_counter() - self._started
        metrics = EpochMetrics(epoch, train_value, val_value, metric_value, lr, seconds)
        self.result.history.append(metrics)
        self.result.reason = divergence(metrics)
        if self.result.reason is not None:
            self.result.status = "diverged"
        elif self._callback is not None and self._callback(metrics):
            self.result.status = "stopped"
        return self.result.status != "complete"


class _Stepped(torch.nn.Module):
    """Stands for a loop task's model in a step hook: the tensors its optimizer steps, named as ``run.build`` got them
    (``model.named_parameters()``), else ``param<i>`` in the optimizer's order."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        super().__init__()
        self.named: list[tuple[str, Any]] = []
        for group in optimizer.param_groups:
            names = group.get("param_names") or [f"param{len(self.named) + i}" for i in range(len(group["params"]))]
            self.named += zip(names, group["params"])

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, torch.nn.Parameter]]:
        return iter(self.named)


def _hook_steps(optimizer: torch.optim.Optimizer, hook: StepHook, steps_per_epoch: int) -> None:
    """Run ``hook`` around every step of ``optimizer`` as :func:`tuner.train.trainer.train` runs it around its own,
    through torch's optimizer step hooks. A hook with ``plan(steps_per_epoch)`` learns the steps of an epoch first."""
    plan = getattr(hook, "plan", None)
    if plan is not None:
        plan(steps_per_epoch)
    stepped, pending = _Stepped(optimizer), []

    def before(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        pending.append(hook(stepped, optimizer))

    def after(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        done = pending.pop()
        if done is not None:
            done()

    optimizer.register_step_pre_hook(before)
    optimizer.register_step_post_hook(after)


def _number(name: str, value: Any) -> float:
    """``value`` as a float: a Python or NumPy number, or a one-element tensor; else :class:`ReportError`."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise ReportError(f"report(): {name} is {type(value).__name__} {value!r} (allowed: a number, e.g. loss.item())")


def run_loop(
    task: Any,
    config: Config,
    device: torch.device,
    seed: int,
    callback: Callable[[EpochMetrics], bool | None] | None = None,
    test: bool = False,
    step_hook: StepHook | None = None,
) -> tuple[RunResult, Run]:
    """Run ``task.fit`` with ``config`` on ``device``, torch's, Python's and NumPy's generators seeded with
    ``seed`` (and restored after); returns its result and the :class:`Run` (its ``optimizer`` as ``build`` returned it).

    ``step_hook`` (default none) runs around every step of the optimizer ``run.build`` returned, as it runs around
    the trainer's steps (:func:`tuner.train.trainer.train`). Raises :class:`ReportError` when ``fit`` never reported,
    returned before its last epoch unstopped, or, with ``test`` and a complete run, returned no numbers
    ``test_loss`` and ``test_metric``.
    """
    run = Run(config, device, seed, test, callback, step_hook)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), python_and_numpy_seeded(seed):
        torch.manual_seed(seed)
        returned = task.fit(run)
    result = run.result
    if not result.history:
        raise ReportError("fit(run) returned without calling run.report(epoch, train_loss, val_loss, val_metric)")
    if result.status == "complete" and len(result.history) < config.epochs:
        raise ReportError(
            f"fit(run) returned after {counted(len(result.history), 'epoch')} of {config.epochs} without being stopped"
        )
    if test and result.status == "complete":
        if not (isinstance(returned, dict) and {"test_loss", "test_metric"} <= returned.keys()):
            raise ReportError(
                f"fit(run) returned {type(returned).__name__} when run.test is True (allowed: a dict with test_loss "
                "and test_metric)"
            )
        result.test_loss, result.test_metric = (_number(name, returned[name]) for name in ("test_loss", "test_metric"))
    return result, run


def state_bytes_per_parameter(task: Any, config: Config, device: torch.device) -> float:
    """Bytes of optimizer state per parameter of the optimizer ``fit`` built, after its first epoch with ``config``
    (the run is stopped at its first report)."""
    _, run = run_loop(task, config, device, config.seed, callback=lambda metrics: True)
    if run.optimizer is None:
        raise ReportError("fit(run) did not call run.build(params, steps_per_epoch)")
    state = sum(
        v.numel() * v.element_size()
        for s in run.optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    return state / sum(p.numel() for group in run.optimizer.param_groups for p in group["params"])


def check_loop(task: Any, device: torch.device) -> None:
    """One epoch of ``task.fit`` with Adam (lr :data:`LOOP_CHECK_LR`) and the test values asked for:
    whatever ``fit`` raises, and each :class:`ReportError`, propagates."""
    config = Config("Adam", {"lr": LOOP_CHECK_LR}, "constant", {}, task.name, {}, 1, task.batch_size, 0, "loss")
    run_loop(task, config, device, 0, test=True)
