"""Resume: what a study records of its setup, the refusal to resume it with another, and the studies a storage holds.

A study is named ``<experiment>/<search space>``; running the same command again tops it up to its budget.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import optuna

from tuner.config.experiment import Experiment
from tuner.config.spaces import ScheduleSpace, SearchSpace
from tuner.errors import UserError, mask_url
from tuner.study.budget import TICKETS_PREFIX
from tuner.tasks.task import Task
from tuner.train.results import objective_label


@dataclass(frozen=True)
class Setup:
    """What every trial of a study shares; a study resumed with another setup is refused.

    ``objective``: ``loss`` or ``metric``; ``direction``: ``minimize`` or ``maximize``; ``metric``: the task's metric
    name; ``amp``: ``none`` (default) or ``bf16``.
    """

    task: str
    task_args: dict[str, Any]
    epochs: int
    batch_size: int
    seed: int
    objective: str
    direction: str
    metric: str
    amp: str = "none"

    @property
    def study_direction(self) -> optuna.study.StudyDirection:
        """``direction`` as Optuna's :class:`~optuna.study.StudyDirection`."""
        return optuna.study.StudyDirection[self.direction.upper()]

    @property
    def label(self) -> str:
        """The objective's name for people: ``loss`` or the task's metric (``accuracy``)."""
        return objective_label(self.objective, self.metric)

    @classmethod
    def resolve(cls, experiment: Experiment, task: Task, amp: str = "none") -> Setup:
        """The setup of ``experiment`` on ``task``, with mixed precision ``amp`` (``none``, the default, or ``bf16``).

        Raises :class:`UserError` naming the experiment's ``objective`` unless it is ``loss``, ``metric`` or the
        task's metric name.
        """
        objective = experiment.objective
        if objective in ("metric", task.metric) and objective != "loss":
            objective, natural = "metric", task.direction
        elif objective == "loss":
            natural = "minimize"
        else:
            raise UserError(
                f"{experiment.at('objective')}: {objective!r} is not allowed (loss, metric or {task.metric!r})"
            )
        return cls(
            task=experiment.task,
            task_args=experiment.task_args,
            epochs=experiment.epochs,
            batch_size=experiment.batch_size or task.batch_size,
            seed=experiment.seed,
            objective=objective,
            direction=experiment.direction or natural,
            metric=task.metric,
            amp=amp,
        )

    def stored(self, space: SearchSpace, schedules: ScheduleSpace) -> dict[str, Any]:
        """What a study records of its setup, to refuse resuming it with another (JSON-safe)."""
        searched = {
            "optimizer": space.optimizer,
            "space": [dataclasses.asdict(p) for p in space.params],
            "schedules": {name: [dataclasses.asdict(p) for p in params] for name, params in schedules.params.items()},
        }
        return json.loads(json.dumps(dataclasses.asdict(self) | searched))


def check_resumable(
    storage: optuna.storages.RDBStorage, name: str, setup: Setup, space: SearchSpace, schedules: ScheduleSpace
) -> None:
    """Refuse to resume study ``name`` if its trials were run with another setup or search space; changes nothing.

    Raises :class:`UserError` naming the study, the storage (password masked) and each field that changed.
    """
    if name not in optuna.get_all_study_names(storage):
        return
    found = optuna.load_study(study_name=name, storage=storage).user_attrs.get("setup")
    # None: another worker created the study a moment ago and is writing its setup (ours, or refused there).
    if not found:
        return
    stored = {"amp": "none"} | found  # studies stored before amp existed ran without it
    changed = [
        f"{k}={stored.get(k)!r} -> {v!r}" if k not in ("space", "schedules") else f"{k} changed"
        for k, v in setup.stored(space, schedules).items()
        if stored.get(k) != v
    ]
    if changed:
        raise UserError(
            f"study {name!r} in {mask_url(str(storage.url))!r} was run with another setup "
            f"({'; '.join(changed)}): use another --storage or experiment name to start afresh"
        )


def experiment_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """The experiments that have studies in ``storage``, sorted (a ledger study of an earlier version, not yet
    deleted, is none)."""
    return sorted(
        {
            n.split("/", 1)[0]
            for n in optuna.get_all_study_names(storage)
            if "/" in n and not n.startswith(TICKETS_PREFIX)
        }
    )


def study_name(experiment: Experiment, space: SearchSpace) -> str:
    """The study of ``space`` in ``experiment``: ``<experiment>/<space>``."""
    return f"{experiment.name}/{space.name}"
