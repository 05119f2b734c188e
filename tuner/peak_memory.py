"""The peak memory of a config's first training step, on a CUDA device.

``torch.cuda.max_memory_allocated`` during the step, less what was allocated before it (PyTorch's allocator:
tensors only, not its cache). The first step is the one that allocates the optimizer's state.

Not measured on the CPU: the growth of the process's peak resident set size (``/proc/self/clear_refs`` then
``VmHWM``), tried here, is hidden by the allocator's reuse of memory freed earlier in the same process: 0 to
2 MB for the same digits-mlp Adam step in three calls in a row. A fresh process per measurement would be needed.
"""

from __future__ import annotations

import torch

from tuner.config import Config
from tuner.tasks import Data, Task
from tuner.train import steps_per_epoch


def peak_step_bytes(task: Task, data: Data, config: Config) -> float | None:
    """Bytes the first training step of ``config`` on the first batch of ``data`` adds at its peak (forward, backward,
    optimizer step and its new state) on ``data``'s CUDA device; None on other devices. Torch's random state is left
    as it was."""
    device = data.train.x.device
    if device.type != "cuda":
        return None
    with torch.random.fork_rng(devices=[device]):
        torch.manual_seed(config.seed)
        model = task.model().to(device)
        optimizer, _ = config.build(model.parameters(), steps_per_epoch=steps_per_epoch(len(data.train), config.batch_size))
        batch = slice(0, config.batch_size)
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        task.loss(model(data.train.x[batch]), data.train.y[batch]).backward()
        optimizer.step()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before)
