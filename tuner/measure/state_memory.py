"""The optimizer's state memory: bytes of ``torch.optim`` state per model parameter after its first step.

A property of the optimizer and its config, not of training: one step tells it (moments, momentum buffers and step
counts are all allocated by then). The report reads it from the study or measures it here.
"""

from __future__ import annotations

import torch

from tuner.config.experiment import Config
from tuner.tasks.task import Data, Task, is_loop
from tuner.train import loop
from tuner.train.trainer import first_step


def state_bytes_per_parameter(task: Task, data: Data, config: Config) -> float:
    """Bytes of optimizer state per model parameter, measured after one training step with ``config``.

    One forward, backward and optimizer step on a training batch of ``data`` (on its device), then the bytes of every
    tensor in ``optimizer.state`` over the model's parameter count; torch's random state is left as it was. A task with
    its own loop (:func:`tuner.tasks.is_loop`) is run to its first report instead and the optimizer its ``fit``
    built is read (:func:`tuner.train.loop.state_bytes_per_parameter`). Raises what the task raises.
    """
    if is_loop(task):
        return loop.state_bytes_per_parameter(task, config, data.device)
    model, optimizer = first_step(task, data, config)
    state = sum(
        v.numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    return state / sum(p.numel() for p in model.parameters())
