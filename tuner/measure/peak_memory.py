"""The peak memory of a config's first training step: the one that allocates the optimizer's state.

- CUDA: ``torch.cuda.max_memory_allocated`` during the step, less what was allocated before it (PyTorch's allocator:
  tensors only, not its cache).
- CPU (Linux): how far the process's peak resident set size (``VmHWM``) rises above its resident set (``VmRSS``)
  during the step, in a fresh Python process that loads the task and its data again. In the process that trained,
  the allocator hands out memory freed earlier without the resident set growing (0 to 2 MB for the same Adam step in
  three calls in a row). The fresh process fixes glibc's mmap threshold at :data:`MMAP_THRESHOLD` bytes, so that a
  tensor above it is mapped when allocated and unmapped when freed, takes one warm-up step (torch's lazy
  initialisation, the optimizer's code paths), then resets the peak (``5`` written to ``/proc/self/clear_refs``)
  and measures a second first step of a fresh model and optimizer. Precise to about 0.1 MB: pages of 4 KiB, and
  allocations under the threshold may reuse free heap memory. Such a process costs an import of torch and a load
  of the task's data (seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tuner.config.experiment import Config
from tuner.config.export import config_from_dict, config_to_dict
from tuner.tasks.check import load_data
from tuner.tasks.loading import load_task
from tuner.tasks.task import Data, Task, is_loop
from tuner.train.trainer import first_step

# Allocations of at least this many bytes are mapped on their own in the measuring process (MALLOC_MMAP_THRESHOLD_).
MMAP_THRESHOLD = 65536


def peak_step_bytes(task: Task, data: Data, config: Config) -> float | None:
    """Bytes the first training step of ``config`` on the first batch of ``data`` adds at its peak (forward, backward,
    optimizer step and its new state), on ``data``'s device: CUDA memory allocated, or on the CPU the growth of the
    peak resident set size, measured in a fresh process that loads ``config.task`` with ``config.task_args``.

    None on other devices, on the CPU of a system other than Linux, and for a task with its own loop (its model and
    data live inside its ``fit``). Torch's random state is left as it was. Raises RuntimeError when the measuring
    process fails (its last line of error output in the message)."""
    device = data.device
    if is_loop(task):
        return None
    if device.type == "cuda":
        peak = _CudaPeak(device)
        first_step(task, data, config, around=lambda: peak)
        return peak.bytes
    if device.type == "cpu" and sys.platform == "linux":
        return _in_fresh_process(config)
    return None


def _in_fresh_process(config: Config) -> float:
    """:func:`_measure_here` of ``config`` in a new Python process with the same import path and thread count."""
    request = json.dumps({"config": config_to_dict(config), "threads": torch.get_num_threads()})
    env = os.environ | {
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "PYTHONPATH": os.pathsep.join(path or os.getcwd() for path in sys.path),
    }
    done = subprocess.run(
        [sys.executable, "-m", __name__], input=request, capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RuntimeError(f"the process measuring the CPU peak memory of {config.optimizer} failed: {last}")
    return float(done.stdout.strip().splitlines()[-1])


def _measure_here(config: Config) -> float:
    """The growth of this process's peak resident set size during the first step of ``config`` on the CPU."""
    task = load_task(config.task, config.task_args)
    data = load_data(task, torch.device("cpu"))
    first_step(task, data, config)  # warm-up: what torch initialises once is not the step's
    peak = _ResidentPeak()
    first_step(task, data, config, around=lambda: peak)
    return peak.bytes


class _CudaPeak:
    """A context that measures how far ``torch.cuda.max_memory_allocated`` rises above what was allocated on entry."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.bytes = device, 0.0

    def __enter__(self) -> None:
        torch.cuda.synchronize(self.device)
        self.before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def __exit__(self, *exc: object) -> None:
        torch.cuda.synchronize(self.device)
        self.bytes = float(torch.cuda.max_memory_allocated(self.device) - self.before)


class _ResidentPeak:
    """A context that measures how far the process's peak resident set size rises above its resident set on entry
    (Linux: the peak reset on entry through ``/proc/self/clear_refs``)."""

    bytes = 0.0

    def __enter__(self) -> None:
        Path("/proc/self/clear_refs").write_text("5")
        self.before = _status_bytes("VmRSS")

    def __exit__(self, *exc: object) -> None:
        self.bytes = float(_status_bytes("VmHWM") - self.before)


def _status_bytes(field: str) -> int:
    """A field of ``/proc/self/status`` given in kB, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


if __name__ == "__main__":
    request = json.loads(sys.stdin.read())
    torch.set_num_threads(request["threads"])
    print(_measure_here(config_from_dict(request["config"])))
