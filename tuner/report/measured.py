"""The two numbers of the report that come from the task's model rather than from the trials: each best config's
optimizer-state bytes per parameter and the untrained model's validation and test objectives.

Read from each study's stored final evaluation where it holds them (``final["state_bytes_per_param"]`` and
``final["untrained"] = {"val": ..., "test": ...}``); otherwise, as for studies written before the final evaluation
stored them, measured here on the CPU by :mod:`tuner.measure.state_memory` and :mod:`tuner.measure.untrained`
(one training step per best config and one evaluation of the untrained model: no training).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from tuner.config.experiment import Config
from tuner.errors import UserError
from tuner.measure.state_memory import state_bytes_per_parameter
from tuner.measure.untrained import untrained_objective
from tuner.tasks.check import load_data
from tuner.tasks.loading import load_task
from tuner.tasks.task import is_loop

SPLITS = ("val", "test")


def measured(
    setup: dict[str, Any], finals: list[Mapping[str, Any] | None], configs: list[Config | None]
) -> tuple[list[float | None], list[float | None], list[str]]:
    """Per study, the state bytes per parameter of its best config (``configs``; None where a study has none), the
    untrained model's ``[val, test]`` objective (None where not finite or not measurable: a task with its own loop), and
    the notes for people (one when the task cannot be built here: then what is not stored stays None).

    ``finals``: each study's stored final evaluation of its current best trial (None where there is none).
    """
    memories = [(final or {}).get("state_bytes_per_param") for final in finals]
    stored = next((final["untrained"] for final in finals if final and "untrained" in final), None)
    untrained = [None if stored is None else stored[split] for split in SPLITS]
    missing = [i for i, (memory, config) in enumerate(zip(memories, configs)) if memory is None and config is not None]
    if not missing and stored is not None:
        return memories, _finite(untrained), []
    try:
        task = load_task(setup["task"], setup["task_args"], "setup.task")
        data = load_data(task, torch.device("cpu"), "setup.task")
    except UserError as err:
        return memories, _finite(untrained), [f"state memory and untrained model not measured: {err}"]
    for i in missing:
        config = configs[i]
        assert config is not None  # missing holds only the studies with a best config
        memories[i] = state_bytes_per_parameter(task, data, config)
    if stored is None and not is_loop(task):  # a task with its own loop has its model inside its fit
        untrained = [untrained_objective(task, data, setup["seed"], setup["objective"], split) for split in SPLITS]
    return memories, _finite(untrained), []


def _finite(values: list[float | None]) -> list[float | None]:
    return [v if v is not None and math.isfinite(v) else None for v in values]
