"""Search space -> Optuna ``suggest_*`` calls -> optimizer kwargs and schedule.

Optuna parameter names are the search-space names (``lr``, ``beta1``) and, for
the schedule, ``schedule`` plus ``<schedule>.<param>`` for its own parameters,
which exist only in trials that chose that schedule (conditional parameters).
"""

from __future__ import annotations

from typing import Any

import optuna

from tuner.config.spaces import Param, ScheduleSpace, SearchSpace
from tuner.train import optim


def suggest(trial: optuna.Trial, name: str, param: Param) -> Any:
    """One value for ``param`` under the Optuna name ``name``."""
    if not param.searched:
        return param.value
    if param.choices is not None:
        return trial.suggest_categorical(name, list(param.choices))
    assert param.low is not None and param.high is not None  # searched without choices: a range
    if param.integer:
        return trial.suggest_int(name, int(param.low), int(param.high))
    if param.scale == "log1m":
        # Betas and momenta live near 1: sample 1 - x on a log scale.
        return 1.0 - trial.suggest_float(f"1-{name}", 1.0 - param.high, 1.0 - param.low, log=True)
    return trial.suggest_float(name, param.low, param.high, log=param.scale == "log")


def sample_optimizer(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """``torch.optim.<space.optimizer>`` kwargs for this trial."""
    values = {p.name: suggest(trial, p.name, p) for p in space.params}
    # torch rejects nesterov without momentum; a sampled momentum of exactly 0
    # (the edge of the range) means plain SGD.
    if values.get("nesterov") and values.get("momentum", 0) == 0:
        values["nesterov"] = False
    return optim.torch_kwargs(space.optimizer, values)


def sample_schedule(trial: optuna.Trial, schedules: ScheduleSpace) -> tuple[str, dict[str, Any]]:
    """The schedule name and its parameters for this trial."""
    name = trial.suggest_categorical("schedule", list(schedules.params))
    return name, {p.name: suggest(trial, f"{name}.{p.name}", p) for p in schedules.params[name]}
