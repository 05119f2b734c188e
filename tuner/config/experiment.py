"""Experiments and configs: what to tune (an experiment file, validated up front) and one fully specified training.

Every check happens before any study exists, and fails with a
:class:`~tuner.errors.UserError` naming the file, the field, the value and
what is allowed. Search spaces are :mod:`tuner.config.spaces`'; the shared
value checks :mod:`tuner.config.checks`'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.config.checks import check_keys, check_name, is_int, is_number, number_hint, positive_int
from tuner.config.files import read_yaml, shipped_dir, shipped_names
from tuner.config.spaces import ScheduleSpace, SearchSpace, find_space, load_schedules
from tuner.errors import UserError
from tuner.train import optim

SAMPLERS = ("tpe", "random", "qmc")
PRUNERS = ("median", "hyperband", "none")
# Mixed precision: none, or bf16 autocast of the forward pass and loss (CUDA only).
AMP = ("none", "bf16")


def find_experiment(ref: str | None) -> Path:
    """An experiment file by path, or a shipped one by name; ``quickstart`` when none is given."""
    ref = ref or "quickstart"
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if ref in shipped_names("experiments"):
        return shipped_dir("experiments") / f"{ref}.yaml"
    raise UserError(
        f"experiment {ref!r}: no such file, and not a shipped experiment ({', '.join(shipped_names('experiments'))})"
    )


EXPERIMENT_KEYS = (
    "name",
    "task",
    "task_args",
    "optimizers",
    "schedules",
    "trials",
    "epochs",
    "batch_size",
    "seed",
    "sampler",
    "pruner",
    "objective",
    "final_seeds",
    "target",
    "population",
    "num_workers",
)

# Samplers take seeds below 2**32; seed + trial count + final seeds stay below it.
MAX_SEED = 2**31 - 1
REQUIRED_KEYS = ("name", "task", "optimizers", "trials", "epochs", "seed")


@dataclass(frozen=True)
class Component:
    """A sampler or pruner: its name and keyword arguments for the Optuna class."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """What to tune: one task, several optimizers (one study each), one budget."""

    name: str
    task: str
    task_args: dict[str, Any]
    optimizers: tuple[SearchSpace, ...]
    schedules: ScheduleSpace
    trials: int
    epochs: int
    batch_size: int | None
    seed: int
    sampler: Component
    pruner: Component
    objective: str
    direction: str | None
    final_seeds: int
    # The report's speed target: epochs until the validation objective reaches
    # it. None: the least good of the optimizers' final-seed means.
    target: float | None
    source: str
    origins: dict[str, str] = field(default_factory=dict, compare=False)
    # Trials trained at once as one vectorized population (tuner.batched.trainer); 1: one at a time.
    population: int = 1
    # DataLoader worker processes of a Dataset task (tuner.tasks.batches); None: the task's num_workers, else a default.
    num_workers: int | None = None

    def at(self, key: str) -> str:
        """Where ``key`` came from, for messages: ``--trials`` or ``exp.yaml: trials``."""
        return self.origins.get(key, f"{self.source}: {key}")


def _component(where: str, raw: Any, allowed: tuple[str, ...], default: str) -> Component:
    if raw is None:
        return Component(default)
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or raw.get("name") not in allowed:
        name = raw.get("name") if isinstance(raw, dict) else raw
        raise UserError(
            f"{where}: {name!r} is not allowed (allowed: {', '.join(allowed)}, or {{name: ..., <arguments>}})"
        )
    return Component(raw["name"], {k: v for k, v in raw.items() if k != "name"})


def load_experiment(path: Path, overrides: dict[str, Any] | None = None) -> Experiment:
    """Read and validate an experiment file; ``overrides`` (CLI flags) win over its keys."""
    where = str(path)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    data = read_yaml(path, "experiment") | flags

    def at(key: str) -> str:
        return "--" + key.replace("_", "-") if key in flags else f"{where}: {key}"

    if "batch_trials" in data:
        raise UserError(
            f"{where}: batch_trials: {data['batch_trials']!r} is not allowed "
            "(renamed: use population, the number of trials trained at once)"
        )
    check_keys(where, data, EXPERIMENT_KEYS)
    for key in REQUIRED_KEYS:
        if key not in data:
            raise UserError(f"{where}: missing required key {key!r} (required: {', '.join(REQUIRED_KEYS)})")
    name = data["name"]
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise UserError(f"{at('name')}: {name!r} is not allowed (a non-empty string without '/')")
    check_name(at("name"), name)
    if not isinstance(data["task"], str):
        raise UserError(f"{at('task')}: {data['task']!r} is not allowed (a task name or package.module:factory)")
    task_args = data.get("task_args") or {}
    if not isinstance(task_args, dict):
        raise UserError(f"{at('task_args')}: {task_args!r} is not allowed (a mapping)")
    refs = data["optimizers"]
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise UserError(f"{at('optimizers')}: {refs!r} is not allowed (a non-empty list of space names or paths)")
    base = path.parent
    spaces = tuple(find_space(ref, base, at("optimizers")) for ref in refs)
    names = [s.name for s in spaces]
    for space in spaces:
        check_name(f"{at('optimizers')}: {space.source}", space.name)
    if len(set(names)) != len(names):
        raise UserError(f"{at('optimizers')}: {names} names a study twice (each search space needs its own file name)")
    schedule_names = data.get("schedules")
    if schedule_names is not None and (
        not isinstance(schedule_names, list)
        or not schedule_names
        or not all(isinstance(s, str) for s in schedule_names)
    ):
        raise UserError(
            f"{at('schedules')}: {schedule_names!r} is not allowed (a non-empty list of: {', '.join(optim.SCHEDULES)})"
        )
    schedules = load_schedules(shipped_dir("search_spaces") / "schedules.yaml", schedule_names, at("schedules"))
    batch_size = data.get("batch_size")
    if batch_size is not None:
        positive_int(at("batch_size"), batch_size)
    seed = data["seed"]
    if not is_int(seed, 0, MAX_SEED):
        raise UserError(f"{at('seed')}: {seed!r} is not allowed (an integer from 0 to {MAX_SEED})")
    objective, direction = data.get("objective", "metric"), None
    if isinstance(objective, dict):
        check_keys(at("objective"), objective, ("metric", "direction"))
        objective, direction = objective.get("metric", "metric"), objective.get("direction")
        if direction not in (None, "minimize", "maximize"):
            raise UserError(f"{at('objective')}.direction: {direction!r} is not allowed (minimize, maximize)")
    if not isinstance(objective, str):
        raise UserError(f"{at('objective')}: {objective!r} is not allowed ('loss', 'metric' or the task's metric name)")
    target = data.get("target")
    if target is not None and not (is_number(target) and math.isfinite(target)):
        raise UserError(
            f"{at('target')}: {target!r} is not allowed (a finite number in the objective's units{number_hint(target)})"
        )
    num_workers = data.get("num_workers")
    if num_workers is not None and not is_int(num_workers, 0):
        raise UserError(
            f"{at('num_workers')}: {num_workers!r} is not allowed (an integer >= 0: DataLoader worker processes)"
        )
    return Experiment(
        name=name,
        task=data["task"],
        task_args=task_args,
        optimizers=spaces,
        schedules=schedules,
        trials=positive_int(at("trials"), data["trials"]),
        epochs=positive_int(at("epochs"), data["epochs"]),
        batch_size=batch_size,
        seed=seed,
        sampler=_component(at("sampler"), data.get("sampler"), SAMPLERS, "tpe"),
        pruner=_component(at("pruner"), data.get("pruner"), PRUNERS, "median"),
        objective=objective,
        direction=direction,
        final_seeds=positive_int(at("final_seeds"), data.get("final_seeds", 3)),
        target=target,
        source=where,
        origins={key: at(key) for key in EXPERIMENT_KEYS},
        population=positive_int(at("population"), data.get("population", 1)),
        num_workers=num_workers,
    )


@dataclass(frozen=True)
class Config:
    """One fully specified training: optimizer, schedule and training set-up.

    ``optimizer_kwargs`` are the keyword arguments of ``torch.optim.<optimizer>``
    as given to it; ``schedule_params`` those of the schedule (see
    :mod:`tuner.train.optim` for how they map onto ``torch.optim.lr_scheduler``).
    ``objective`` is ``"loss"`` (validation loss) or ``"metric"`` (the task's metric).
    ``amp`` is ``"none"`` (default, full precision) or ``"bf16"`` (forward pass and
    loss under ``torch.autocast(dtype=torch.bfloat16)``, on CUDA).
    """

    optimizer: str
    optimizer_kwargs: dict[str, Any]
    schedule: str
    schedule_params: dict[str, Any]
    task: str
    task_args: dict[str, Any]
    epochs: int
    batch_size: int
    seed: int
    objective: str = "metric"
    amp: str = "none"
    metrics: dict[str, Any] = field(default_factory=dict, compare=False)
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    def build(self, params: Any, *, steps_per_epoch: int):
        """``(optimizer, scheduler_or_None)`` for ``params``; step the scheduler after every optimizer step."""
        if not is_int(steps_per_epoch):
            raise ValueError(f"steps_per_epoch: {steps_per_epoch!r} is not allowed (an integer >= 1)")
        optimizer = optim.build_optimizer(self.optimizer, self.optimizer_kwargs, params)
        try:
            scheduler = optim.build_scheduler(
                self.schedule, self.schedule_params, optimizer, self.epochs * steps_per_epoch
            )
        except ZeroDivisionError:  # torch's OneCycleLR when a phase has no step
            raise ValueError(
                f"steps_per_epoch={steps_per_epoch}: too few steps in all ({self.epochs * steps_per_epoch}) "
                f"for schedule {self.schedule} {self.schedule_params}"
            ) from None
        return optimizer, scheduler
