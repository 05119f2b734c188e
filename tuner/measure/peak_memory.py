"""The peak memory of a config's first training step: the one that allocates the optimizer's state.

- CUDA: ``torch.cuda.max_memory_allocated`` during the step, less what was allocated before it (PyTorch's allocator:
  tensors only, not its cache), after a warm-up step that allocates what CUDA keeps for good (cuBLAS's workspace).
- CPU (Linux): how far the process's peak resident set size (``VmHWM``) rises above its resident set (``VmRSS``)
  during the step, in a child forked from the process that trained (the task and its data as they are, tens of
  milliseconds). In the process that trained, the allocator hands out memory freed earlier without the resident set
  growing (0 to 2 MB for the same Adam step in three calls in a row). The child fixes glibc's mmap threshold at
  :data:`MMAP_THRESHOLD` bytes, so that a tensor above it is mapped when allocated and unmapped when freed, runs torch
  on one thread, takes one warm-up step (the optimizer's code paths), then resets the peak (``5`` written to
  ``/proc/self/clear_refs``) and measures a second first step of a fresh model and optimizer. It counts the step's
  temporaries too, as CUDA's figure does, but whether one reuses memory freed earlier in the step varies from run
  to run: two runs of Adam on digits-mlp with 614,410 parameters gave 10.9 and 14.9 MiB (SGD 6.2 and 6.3 MiB).
  CUDA's figure is the precise one.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from tuner.config.experiment import Config
from tuner.tasks.task import Data, Task, is_loop
from tuner.train.trainer import M_MMAP_THRESHOLD, first_step

# Allocations of at least this many bytes are mapped on their own in the measuring process (MALLOC_MMAP_THRESHOLD_).
MMAP_THRESHOLD = 65536


def peak_step_bytes(task: Task, data: Data, config: Config) -> float | None:
    """Bytes the first training step of ``config`` on the first batch of ``data`` adds at its peak (forward, backward,
    optimizer step and its new state), on ``data``'s device: CUDA memory allocated, or on the CPU the growth of the
    peak resident set size, measured in a forked child process.

    None on other devices, on the CPU of a system other than Linux, and for a task with its own loop (its model and
    data live inside its ``fit``). Torch's random state is left as it was. Raises RuntimeError when the measuring
    process fails (its last line of error output in the message)."""
    device = data.device
    if is_loop(task):
        return None
    if device.type == "cuda":
        # Warm-up, as on the CPU: what CUDA allocates once and keeps (cuBLAS's workspace: megabytes, more
        # than Adam's state on a small model) is not the step's, and only the first config measured would pay it.
        first_step(task, data, config)
        peak = _CudaPeak(device)
        first_step(task, data, config, around=lambda: peak)
        return peak.bytes
    if device.type == "cpu" and sys.platform == "linux" and platform.libc_ver()[0] == "glibc":
        return _in_forked_process(task, data, config)
    return None


def _in_forked_process(task: Task, data: Data, config: Config) -> float:
    """:func:`_measure_here` in a child forked from this process: the task and its data as they are here, no import.

    The child runs torch on one thread (OpenMP's thread team does not survive a fork: torch's DataLoader workers do
    the same) and has glibc map every block of :data:`MMAP_THRESHOLD` bytes or more on its own, and hand the free
    pages of its heap back (``malloc_trim``) after the warm-up: the heap of a process that trained holds freed memory
    that the step would reuse without the resident set growing. Raises RuntimeError when the child fails."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, write the figure, and leave without running the parent's exit handlers
        code = 1
        try:
            os.close(read)
            # The task's own code runs here too: its logs (and a test's records) can tell this child from training.
            multiprocessing.current_process().name = "tuner-peak-memory"
            libc = ctypes.CDLL(None)
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            torch.set_num_threads(1)
            os.write(write, repr(_measure_here(task, data, config, lambda: libc.malloc_trim(0))).encode())
            code = 0
        except BaseException as err:  # said to the parent through the pipe; the child never returns
            os.write(write, f"error {type(err).__name__}: {err}".encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or text.startswith("error"):
        raise RuntimeError(f"the process measuring the CPU peak memory of {config.optimizer} failed: {text or status}")
    return float(text)


def _measure_here(task: Task, data: Data, config: Config, release: Callable[[], object]) -> float:
    """The growth of this process's peak resident set size during the first step of ``config`` on the CPU, after a
    warm-up step and ``release()`` (which hands free heap memory back to the system)."""
    first_step(task, data, config)  # warm-up: what torch initialises once is not the step's
    release()
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
