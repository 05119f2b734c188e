"""How many members of a population fit: the memory one member needs against the device's free memory."""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from tuner.batched.model import own_random_state, seeded_model, splits
from tuner.batched.optimizers import VECTORIZED
from tuner.batched.stackable import why_not_batched
from tuner.tasks.task import Data, Task
from tuner.train.trainer import autocast

# Share of the free device memory a population may plan to use.
MEMORY_SHARE = 0.8


def member_bytes(task: Task, data: Data, batch_size: int, amp: str, optimizers: Iterable[str]) -> int:
    """Memory one member needs, in bytes: parameters, gradients, optimizer state and update temporaries (two),
    the activations one training batch keeps for the backward pass (measured with one forward pass), its
    permuted copy of the training split, and its outputs over the validation split (in-memory splits only: else
    ValueError, see :func:`tuner.batched.model.splits`).

    ``optimizers``: the ``torch.optim`` class names of the studies (the largest optimizer state counts); each must
    be in :data:`tuner.batched.optimizers.VECTORIZED` (else KeyError). ``amp``: ``none`` or ``bf16``."""
    train, val, _ = splits(data)
    device = train.x.device
    model = seeded_model(task, 0, device)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    copies = 2 + max(len(VECTORIZED[name].states) for name in optimizers) + 2
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in own:
            saved.append(t.numel() * t.element_size())
        return t

    x, y = train.x[:batch_size], train.y[:batch_size]
    with own_random_state(device), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device, amp):
        output = model(x)
        task.loss(output, y)
    split = train.x.numel() * train.x.element_size() + train.y.numel() * train.y.element_size()
    evaluation = output[:1].numel() * output.element_size() * len(val)
    return params * copies + sum(saved) + output.numel() * output.element_size() + split + evaluation


def free_bytes(device: torch.device) -> int:
    """Free memory of ``device`` in bytes: ``torch.cuda.mem_get_info`` on CUDA, else the host's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def population_that_fits(
    task: Task,
    data: Data,
    population: int,
    batch_size: int,
    amp: str,
    optimizers: Iterable[str],
    share: float = 1.0,
) -> tuple[int, str | None]:
    """How many trials to train at once: ``population`` (>= 1), or fewer, with one line saying why (None when
    ``population`` stands).

    1 (one trial at a time) when the task cannot be batched (see
    :func:`tuner.batched.stackable.why_not_batched`); fewer members when ``population`` of them would need
    more than :data:`MEMORY_SHARE` of the device's free memory (times
    ``share``, in (0, 1], a worker's part of the machine; default 1). ``batch_size``, ``amp`` and ``optimizers``
    as for :func:`member_bytes`.
    """
    if population == 1:
        return 1, None
    why = why_not_batched(task, data)
    if why is not None:
        return 1, f"batched trials: task {task.name!r} cannot be batched, so its trials run one at a time: {why}"
    device = splits(data)[0].x.device
    need, free = member_bytes(task, data, batch_size, amp, optimizers), free_bytes(device) * share
    fits = int(free * MEMORY_SHARE // need)
    if fits >= population:
        return population, None
    return max(1, fits), (
        f"batched trials: a population of {population} would need about {_mib(need * population)} on {device}, "
        f"{MEMORY_SHARE:.0%} of its {_mib(free)} free allows {fits}: "
        + ("one trial at a time" if fits <= 1 else f"a population of {fits}")
    )


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"
