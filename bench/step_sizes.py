"""What recording the step sizes (:mod:`tuner.measure.step_sizes`) costs a final evaluation.

For each task and optimizer, the final evaluation's work (``--seeds`` runs of ``--epochs`` epochs, test
evaluation at the end) runs with the :class:`~tuner.measure.step_sizes.StepSizes` hook, and the time spent inside the
hook (before and after each recorded step, and the end of the run's record: η, |Δθ|/|g|, their percentiles and one
copy to the host) is summed: the printed share is that time over the whole evaluation's, in wall-clock time and in
process CPU time. On a shared machine timing two separate runs measures the neighbours' load more than the hook; the
share inside one run does not, and the CPU share (time the process ran, not time it waited for a core) least of all.
The process keeps freed memory as training commands do (:func:`tuner.train.trainer.keep_freed_memory`). On CUDA each
hook call is synchronised before and after (``--device cuda``), so that its kernels count to it. A step the hook does
not record only counts it (0.4 µs of CPU here): those calls are not timed, as reading the two clocks costs more (3 µs,
~0.5% of a digits-mlp evaluation). The load average is printed beside the figures: on a loaded machine both shares
are less sure.

    nice python bench/step_sizes.py --tasks digits-mlp digits-cnn --epochs 10
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from tuner.config.experiment import Config
from tuner.measure.step_sizes import StepSizes
from tuner.tasks.check import load_data
from tuner.tasks.loading import load_task
from tuner.train.trainer import keep_freed_memory, steps_per_epoch, train

CONFIGS = {"Adam": {"lr": 1e-3}, "SGD": {"lr": 0.05, "momentum": 0.9}, "RMSprop": {"lr": 1e-3}}


class Timed(StepSizes):
    """:class:`StepSizes` that sums the seconds spent in it."""

    def __init__(self, *args: int, sync) -> None:
        super().__init__(*args)
        self.seconds, self.cpu, self.sync = 0.0, 0.0, sync

    def _timed(self, call, *args):
        self.sync()
        started, cpu = time.perf_counter(), time.process_time()
        out = call(*args)
        self.sync()
        self.seconds += time.perf_counter() - started
        self.cpu += time.process_time() - cpu
        return out

    def __call__(self, model, optimizer):
        if self.step + 1 not in self.steps:  # not recorded: counted only (see the module's docstring)
            return super().__call__(model, optimizer)
        after = self._timed(super().__call__, model, optimizer)
        return None if after is None else (lambda: self._timed(after))

    def result(self):
        return self._timed(super().result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits-mlp", "digits-cnn"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for name in args.tasks:
        task = load_task(name)
        data = load_data(task, device)
        for optimizer, kwargs in CONFIGS.items():
            config = Config(optimizer, kwargs, "cosine", {}, name, {}, args.epochs, task.batch_size, 0)
            train(task, data, config)  # warm-up
            hook_s = hook_cpu = total = total_cpu = 0.0
            for seed in range(1, args.seeds + 1):
                hook = Timed(steps_per_epoch(len(data.train), config.batch_size), config.epochs, sync=sync)
                started, cpu = time.perf_counter(), time.process_time()
                train(task, data, config, seed=seed, test=True, step_hook=hook)
                hook.result()
                sync()
                total += time.perf_counter() - started
                total_cpu += time.process_time() - cpu
                hook_s += hook.seconds
                hook_cpu += hook.cpu
            print(
                f"{name:12} {optimizer:8} {device} {len(hook.steps)} records a run, {args.seeds} seeds: "
                f"wall {total:.2f} s, of which the hook {hook_s:.3f} s = {100 * hook_s / total:.1f}%; "
                f"CPU {total_cpu:.2f} s, the hook {hook_cpu:.3f} s = {100 * hook_cpu / total_cpu:.1f}%; "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
