"""Can a task's trials train as one population: its model and loss tried stacked, on a few samples."""

from __future__ import annotations

import torch

from tuner.batched.model import StackedModel, seeded_model, splits, stacking
from tuner.errors import reason
from tuner.tasks.check import CHECK_BATCH
from tuner.tasks.task import Data, Task, is_loop


def why_not_batched(task: Task, data: Data) -> str | None:
    """None if ``task``'s model and loss train as a population; else why not, in a few words.

    Two members (seeds 0 and 1) take one stacked training step on ``CHECK_BATCH`` training samples, then their
    stacked outputs in evaluation mode (a fresh stack of the same models) must equal each model's own (within
    float rounding, rtol 1e-4, atol 1e-5): an operator without a batching rule under vmap, a loss that reads
    values on the host, or a model that keeps parameters ``functional_call`` cannot replace each show here. A task
    with its own loop or with data read through DataLoaders is never batched. Raises nothing: whatever the task's
    code raises is the reason.
    """
    if is_loop(task):
        return "it trains with its own loop (fit), which tuner cannot stack"
    if not data.in_memory:
        return "its data are Datasets read through DataLoaders (batched trials slice in-memory tensors)"
    device = data.device
    train = splits(data)[0]
    x, y = train.x[:CHECK_BATCH], train.y[:CHECK_BATCH]
    models = [seeded_model(task, seed, device) for seed in (0, 1)]
    with stacking(device):
        try:
            stacked = StackedModel(models, task.loss)
            stacked.train()
            stacked.losses(x.expand(2, *x.shape), y.expand(2, *y.shape)).sum().backward()
            stacked.grad()
            # A fresh stack for the comparison: the training step updated the stacked buffers (BatchNorm's
            # running statistics), not the models' own.
            fresh = StackedModel(models, task.loss)
            fresh.train(False)
            with torch.no_grad():
                outputs = fresh.shared(x)
                same = all(
                    torch.allclose(out, model.eval()(x), rtol=1e-4, atol=1e-5) for out, model in zip(outputs, models)
                )
        except Exception as err:  # whatever vmap or the task's code raise, the task runs one trial at a time
            return f"a stacked training step (vmap over its model and loss) raised {reason(err)}"
    if not same:
        return (
            "its stacked outputs differ from each model's own "
            "(a module keeps parameters that functional_call cannot replace)"
        )
    return None
