"""Trials per minute of batched trials (K at once, one vectorized model) against one trial at a time.

For each task (default: the quickstart's ``digits-mlp`` and the larger
``digits-cnn``) and each pruner (default: ``none``, then ``median``), one run of
this script tunes the same study twice on fresh SQLite storages in a temporary
folder, with the same budget, sampler (TPE) and seed: once one trial at a time
(``StudyRunner.run``, as ``tuner study`` runs), once ``--k`` trials at once
(``StudyRunner.run_batched``, as ``tuner study --population K``). Only the
tuning is timed: sampling, budget tickets, training, pruning and storing every
trial; the data loading, the final evaluation and the exported YAML are the
same either way and left out. An untimed short study of each kind first does
the one-off imports and warm-up.

**Per-config throughput**, as this benchmark means it: configurations tuned
per minute, end to end, each trained for the same number of epochs on both
sides, i.e. trials per minute with ``pruner: none``. With the median pruner,
trials per minute also measure how many epochs pruning saved, and the two
sides prune differently by design: the pruner waits for 5 complete trials, so
a batched study cannot prune its first K trials and trains more epochs for the
same budget. Those figures are printed too, with the epochs trained per second
end to end (the work done per second, whatever was pruned).

Then **training only**: the configs of the one-at-a-time study's trials, each
for the epochs its trial trained, are trained again with ``tuner.train.trainer.train``
one at a time and with ``tuner.batched.trainer.train_batched`` K at a time, without
Optuna or a storage: the same work on both sides, so epochs per second give
the per-config training throughput, without what a study adds per trial
(sampling, a budget ticket, the transaction that stores the trial).

The training-only batched side's learning curves are compared with the one-at-a-time
study's (the same configs trained alone): per trial, the largest relative
difference of its train and validation loss over its epochs, summarised over
the complete trials and over the others (pruned, diverged): median, 90th
percentile, largest. They differ by rounding only (the stacked forward and
backward passes sum in another order), which training amplifies: little in
configs that train stably, without bound in chaotic ones (a learning rate at
the edge of divergence, a loss that grows), which the pruner stops.

Both sides run with the allocator that ``tuner study`` sets (freed memory
kept for reuse: ``tuner.train.trainer.keep_freed_memory``); ``--malloc glibc``
measures with glibc's defaults instead.

Each figure comes with wall-clock seconds and the process's CPU time
(``time.process_time``: with ``--threads 1``, other processes on the machine
slow it far less than the wall clock) and the 1-minute load average at the end
of the run. With ``--repeat N`` every side runs N times, alternating, and the
fastest is kept, by wall clock and by CPU time apart.

Run from the repository root::

    make bench-batched                               # python bench/batched.py $(ARGS)
    .venv/bin/python bench/batched.py --threads 1 --repeat 3
    .venv/bin/python bench/batched.py digits-mlp --pruners median --trials 64 --epochs 25
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import statistics
import sys
import tempfile
import time

import optuna
import torch

from tuner.batched.trainer import train_batched
from tuner.cli.arguments import positive_int
from tuner.config import experiment as config
from tuner.config.experiment import Config
from tuner.config.export import config_from_dict
from tuner.study.connection import open_storage
from tuner.study.resume import Setup
from tuner.study.runner import StudyRunner
from tuner.tasks.check import load_data
from tuner.tasks.loading import load_task
from tuner.train.results import EpochMetrics
from tuner.train.trainer import keep_freed_memory, resolve_device, train

# The budget of each task when not given: (trials, epochs). The quickstart's own; digits-cnn's 1.4 s trials halved.
BUDGETS = {"digits-mlp": (40, 25), "digits-cnn": (32, 10)}


@dataclasses.dataclass(frozen=True)
class Timing:
    """One timed run: wall-clock and process CPU seconds, trials, epochs trained, the 1-minute load average at its end."""

    seconds: float
    cpu: float
    trials: int
    epochs: int
    load: float = dataclasses.field(default_factory=lambda: os.getloadavg()[0])


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def tune(experiment: config.Experiment, task, data, size: int, folder: str) -> tuple[Timing, list[tuple[Config, dict]]]:
    """Tune ``experiment``'s first optimizer with ``size`` trials at once into a fresh storage in ``folder``; timed.
    Also returns each trial's config and learning curve (its user attribute ``history``)."""
    setup = Setup.resolve(experiment, task)
    storage = open_storage(f"sqlite:///{folder}/bench-{size}-{time.monotonic_ns()}.db")
    runner = StudyRunner(experiment, experiment.optimizers[0], setup, task, data, storage)
    started = clock()
    runner.run_batched(experiment.trials, size)
    done = clock()
    runs = [
        (config_from_dict(t.user_attrs["config"]), t.user_attrs["history"] | {"outcome": t.user_attrs["outcome"]})
        for t in runner.study.get_trials(deepcopy=False)
    ]
    return timing_between(started, done, len(runs), sum(len(history["epoch"]) for _, history in runs)), runs


def timing_between(started: tuple[float, float], done: tuple[float, float], trials: int, epochs: int) -> Timing:
    return Timing(done[0] - started[0], done[1] - started[1], trials, epochs)


def train_only(task, data, runs: list[tuple[Config, dict]], size: int) -> tuple[Timing, list[list[EpochMetrics]]]:
    """Train each config for the epochs of its ``history``, ``size`` at a time (1: with the one-at-a-time trainer); timed.
    Also returns each config's learning curve."""
    epochs = [len(history["epoch"]) for _, history in runs]
    curves: list[list[EpochMetrics]] = [[] for _ in runs]
    started = clock()
    if size == 1:
        for i, (cfg, _) in enumerate(runs):
            curves[i] = train(task, data, cfg, callback=lambda metrics, i=i: metrics.epoch >= epochs[i]).history
    else:
        waiting = iter(enumerate(cfg for cfg, _ in runs))
        train_batched(
            task,
            data,
            size,
            lambda n: list(itertools.islice(waiting, n)),
            lambda i, metrics: metrics.epoch >= epochs[i],
            lambda ended: [curves.__setitem__(i, result.history) for i, result in ended],
        )
    return timing_between(started, clock(), len(runs), sum(epochs)), curves


def differences(runs: list[tuple[Config, dict]], curves: list[list[EpochMetrics]]) -> list[float]:
    """Per trial: the largest relative difference between its stored train and validation losses and ``curves``' (finite epochs)."""
    largest = []
    for (_, history), curve in zip(runs, curves):
        pairs = [(a, getattr(m, key)) for key in ("train_loss", "val_loss") for a, m in zip(history[key], curve)]
        largest.append(
            max(
                (abs(a - b) / max(abs(a), 1e-12) for a, b in pairs if math.isfinite(a) and math.isfinite(b)),
                default=0.0,
            )
        )
    return largest


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "tasks", nargs="*", default=list(BUDGETS), help=f"built-in tasks (default: {' '.join(BUDGETS)})"
    )
    parser.add_argument("--k", type=positive_int, default=16, help="trials at once on the batched side (default 16)")
    parser.add_argument("--optimizer", default="adam", help="the search space tuned (default adam)")
    parser.add_argument(
        "--pruners", nargs="+", default=["none", "median"], help="pruners, one comparison each (default: none median)"
    )
    parser.add_argument("--trials", type=positive_int, help="budget in trials (default: per task, see BUDGETS)")
    parser.add_argument("--epochs", type=positive_int, help="epochs per trial (default: per task)")
    parser.add_argument(
        "--repeat", type=positive_int, default=1, help="runs of each side, alternating; the fastest is kept (default 1)"
    )
    parser.add_argument(
        "--threads", type=positive_int, help="torch.set_num_threads(N) first (default: torch's own choice)"
    )
    parser.add_argument("--device", default="cpu", help="device of both sides (default: cpu)")
    parser.add_argument(
        "--malloc",
        choices=["keep", "glibc"],
        default="keep",
        help="keep: freed memory kept for reuse, as tuner study and train set it (tuner.train.trainer.keep_freed_memory); "
        "glibc: glibc's defaults (default keep)",
    )
    args = parser.parse_args()
    if args.malloc == "keep":
        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    print(
        f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads, K={args.k}, malloc {args.malloc}; "
        f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(
        f"{'task':11} {'pruner':6} {'K':>3} {'trials':>6} {'epochs':>6} {'wall s':>7} {'cpu s':>7} {'load':>5} {'trials/min':>10} {'epochs/s':>9}"
        "   speedup: trials/min (wall, cpu), epochs/s (wall, cpu)"
    )
    quickstart = config.find_experiment("quickstart")
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as folder:
        for task_name in args.tasks:
            trials, epochs = (
                args.trials or BUDGETS.get(task_name, (32, 10))[0],
                args.epochs or BUDGETS.get(task_name, (32, 10))[1],
            )
            task = load_task(task_name)
            data = load_data(task, device)
            for pruner in args.pruners:
                overrides = {
                    "task": task_name,
                    "optimizers": [args.optimizer],
                    "trials": trials,
                    "epochs": epochs,
                    "pruner": pruner,
                }
                experiment = config.load_experiment(quickstart, overrides)
                warm = dataclasses.replace(experiment, trials=2, epochs=1)
                for size in (1, args.k):
                    tune(warm, task, data, size, folder)
                sides = {"tuning": {1: [], args.k: []}, "training only": {1: [], args.k: []}}
                for _ in range(args.repeat):
                    for size in (1, args.k):
                        timing, runs = tune(experiment, task, data, size, folder)
                        sides["tuning"][size].append(timing)
                        if size == 1:
                            same_work = runs
                    for size in (1, args.k):
                        timing, curves = train_only(task, data, same_work, size)
                        sides["training only"][size].append(timing)
                for side, timings in sides.items():
                    report(task_name, pruner, side, timings)
                largest = differences(same_work, curves)
                print(
                    f"{task_name:11} {pruner:6} learning curves, batched vs alone, largest relative difference of train/val loss per trial:"
                )
                for label, complete in (("complete", True), ("pruned or diverged", False)):
                    group = sorted(
                        d
                        for d, (_, history) in zip(largest, same_work)
                        if (history["outcome"] == "complete") == complete
                    )
                    if group:
                        print(
                            f"{'':18}   {label} trials ({len(group)}): median {statistics.median(group):.1e}, "
                            f"90% {group[int(0.9 * (len(group) - 1))]:.1e}, max {group[-1]:.1e}; within 1e-5: {sum(d <= 1e-5 for d in group)}"
                        )
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


def report(task_name: str, pruner: str, side: str, timings: dict[int, list[Timing]]) -> None:
    """One line per side (1, then K at once): the fastest run by wall clock (its seconds, load, rates) and the fastest by CPU
    time; on K's line, its speedups."""
    fastest = {size: (min(ts, key=lambda t: t.seconds), min(ts, key=lambda t: t.cpu)) for size, ts in timings.items()}
    one, one_cpu = fastest[1]
    for size, (wall, cpu) in fastest.items():
        speedup = (
            ""
            if size == 1
            else (
                f"   {wall.trials / wall.seconds / (one.trials / one.seconds):.2f}x, {cpu.trials / cpu.cpu / (one_cpu.trials / one_cpu.cpu):.2f}x;"
                f" {wall.epochs / wall.seconds / (one.epochs / one.seconds):.2f}x, {cpu.epochs / cpu.cpu / (one_cpu.epochs / one_cpu.cpu):.2f}x"
            )
        )
        print(
            f"{task_name:11} {pruner:6} {size:3} {wall.trials:6} {wall.epochs:6} {wall.seconds:7.2f} {cpu.cpu:7.2f} {wall.load:5.1f} "
            f"{60 * wall.trials / wall.seconds:10.1f} {wall.epochs / wall.seconds:9.1f}{speedup}   {side}",
            flush=True,
        )
    if len(timings[1]) > 1:
        print(
            f"{'':18} each run ({side}), wall/cpu s: "
            + "; ".join(
                f"K={size}: {', '.join(f'{t.seconds:.1f}/{t.cpu:.1f}' for t in ts)}" for size, ts in timings.items()
            )
        )


if __name__ == "__main__":
    sys.exit(main())
