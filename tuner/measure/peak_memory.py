"""The peak memory of a config's first training step, on a CUDA device.

``torch.cuda.max_memory_allocated`` during the step, less what was allocated before it (PyTorch's allocator:
tensors only, not its cache). The first step is the one that allocates the optimizer's state.

Not measured on the CPU: the growth of the process's peak resident set size (``/proc/self/clear_refs`` then
``VmHWM``), tried here, is hidden by the allocator's reuse of memory freed earlier in the same process: 0 to
2 MB for the same digits-mlp Adam step in three calls in a row. A fresh process per measurement would be needed.
"""

from __future__ import annotations

import torch

from tuner.config.experiment import Config
from tuner.tasks.task import Data, Task, is_loop
from tuner.train.trainer import first_step


def peak_step_bytes(task: Task, data: Data, config: Config) -> float | None:
    """Bytes the first training step of ``config`` on the first batch of ``data`` adds at its peak (forward, backward,
    optimizer step and its new state) on ``data``'s CUDA device; None on other devices and for a task with its own
    loop (its model and data live inside its ``fit``). Torch's random state is left as it was."""
    device = data.device
    if device.type != "cuda" or is_loop(task):
        return None
    peak = _Peak(device)
    first_step(task, data, config, around=lambda: peak)
    return peak.bytes


class _Peak:
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
