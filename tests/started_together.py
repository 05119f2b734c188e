"""A task factory for tests of several commands on one storage: ``started_together:digits`` is the digits-mlp task,
handed out only once ``parties`` processes have asked for it.

Each command imports torch, Optuna and MLflow before it takes a trial; on a loaded machine one command can take
seconds longer than another, and the others may have trained the whole budget before it starts. Meeting at this
barrier first makes every command take part, so that a test can require it.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import time
from pathlib import Path

import torch

from tuner.tasks.loading import load_task
from tuner.tasks.task import Task


def digits(
    parties: int = 1, folder: str = "", timeout: float = 300.0, workers_only: bool = False, first_trial: bool = False
) -> Task:
    """digits-mlp, returned once ``parties`` distinct processes have called this with the same ``folder``;
    ``workers_only``: only ``--jobs`` workers (spawned children) meet, the command's own process passes at once.
    ``first_trial``: they meet instead at their first trial's model (the second ``model()`` call: the first is the
    task's check), budget ticket in hand, so that none can train the whole budget before another has taken a ticket."""
    if workers_only and multiprocessing.parent_process() is None:
        return load_task("digits-mlp")
    task = load_task("digits-mlp")
    if not first_trial:
        _meet(Path(folder), parties, timeout)
        return task
    plain, calls = task.model, itertools.count()

    def model() -> torch.nn.Module:
        if next(calls) == 1:
            _meet(Path(folder), parties, timeout)
        return plain()

    task.model = model  # type: ignore[method-assign]
    return task


def _meet(meeting: Path, parties: int, timeout: float) -> None:
    """Wait until ``parties`` distinct processes have arrived in the folder ``meeting`` (or ``timeout`` seconds)."""
    meeting.mkdir(parents=True, exist_ok=True)
    (meeting / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout
    while len(list(meeting.iterdir())) < parties and time.monotonic() < deadline:
        time.sleep(0.05)
