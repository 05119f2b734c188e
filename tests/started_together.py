"""A task factory for tests of several commands on one storage: ``started_together:digits`` is the digits-mlp task,
handed out only once ``parties`` processes have asked for it.

Each command imports torch, Optuna and MLflow before it takes a trial; on a loaded machine one command can take
seconds longer than another, and the others may have trained the whole budget before it starts. Meeting at this
barrier first makes every command take part, so that a test can require it.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from tuner.tasks.loading import load_task
from tuner.tasks.task import Task


def digits(parties: int = 1, folder: str = "", timeout: float = 300.0, workers_only: bool = False) -> Task:
    """digits-mlp, returned once ``parties`` distinct processes have called this with the same ``folder``;
    ``workers_only``: only ``--jobs`` workers (spawned children) meet, the command's own process passes at once."""
    if workers_only and multiprocessing.parent_process() is None:
        return load_task("digits-mlp")
    meeting = Path(folder)
    meeting.mkdir(parents=True, exist_ok=True)
    (meeting / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout
    while len(list(meeting.iterdir())) < parties and time.monotonic() < deadline:
        time.sleep(0.05)
    return load_task("digits-mlp")
