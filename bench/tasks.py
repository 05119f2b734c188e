"""How long does one default trial of each built-in task take, and does Adam at lr=1e-3 learn it?

For every task in ``tuner.tasks.loading.BUILTIN`` (or those named), with the task's
default ``task_args``, epochs and batch size: trains Adam (lr=1e-3, betas
(0.9, 0.999), eps=1e-8, constant schedule) with the trainer that trials use,
on the seeds 0, 1, ... and prints the wall-clock seconds of one trial (the
fastest of the seeds), the validation loss and metric before training and
after the first and the last epoch (mean over the seeds), and the test metric.

Run from the repository root::

    .venv/bin/python bench/tasks.py                   # every built-in, 2 seeds
    .venv/bin/python bench/tasks.py lstm-adding --seeds 3 --epochs 40
    .venv/bin/python bench/tasks.py --threads 1       # steadier on a busy machine
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tuner.config.experiment import Config
from tuner.tasks.check import load_data
from tuner.tasks.loading import BUILTIN, load_task
from tuner.train.trainer import evaluate, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="*", default=list(BUILTIN), help="task names (default: every built-in)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per task (default 2)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the task's)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 1e-3)")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's choice, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; Adam lr={args.lr}, constant schedule")
    print(
        "task              epochs  batch  s/trial  val loss: init -> 1st -> last   val metric: init -> 1st -> last   test metric"
    )
    for name in args.tasks:
        task = load_task(name)
        data = load_data(task, torch.device("cpu"))
        epochs = args.epochs or task.epochs
        config = Config(
            "Adam",
            {"lr": args.lr, "betas": (0.9, 0.999), "eps": 1e-8},
            "constant",
            {},
            name,
            {},
            epochs,
            task.batch_size,
            0,
            "loss",
        )
        torch.manual_seed(0)
        init_loss, init_metric = evaluate(task, task.model(), data.val)
        seconds, runs = [], []
        for seed in range(args.seeds):
            start = time.perf_counter()
            runs.append(train(task, data, config, seed=seed, test=True))
            seconds.append(time.perf_counter() - start)

        def mean(values: list[float | None]) -> float:
            return statistics.fmean(v for v in values if v is not None)

        first = [run.history[0] for run in runs]
        last = [run.history[-1] for run in runs]
        print(
            f"{name:17} {epochs:6} {task.batch_size:6} {min(seconds):8.2f}"
            f"   {init_loss:8.4g} -> {mean([m.val_loss for m in first]):8.4g} -> {mean([m.val_loss for m in last]):8.4g}"
            f"   {task.metric} {init_metric:6.3g} -> {mean([m.val_metric for m in first]):6.3g} -> {mean([m.val_metric for m in last]):6.3g}"
            f"   {mean([run.test_metric for run in runs]):.3g}",
            flush=True,
        )


if __name__ == "__main__":
    main()
