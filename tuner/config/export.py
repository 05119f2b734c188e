"""Best-config YAML, in and out (``format: 1``).

The file maps one-to-one onto torch: ``optimizer.class`` and ``optimizer.kwargs``
are the ``torch.optim`` class and its keyword arguments; ``schedule`` names the
schedule and its parameters (see :mod:`tuner.train.optim` for the torch objects it
becomes); ``training`` is what ``tuner train`` needs to re-run it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import yaml

from tuner.config.checks import check_keys, check_type, is_int, is_number
from tuner.config.experiment import AMP, MAX_SEED, Config
from tuner.config.files import read_yaml
from tuner.errors import UserError
from tuner.train import optim

FORMAT = 1
TORCH_PREFIX = "torch.optim."
TRAINING_KEYS = ("task", "task_args", "epochs", "batch_size", "seed", "objective", "amp")
# The keys of each section, as config_to_dict writes them (metrics and source are free-form records).
SECTION_KEYS = {
    "": ("format", "optimizer", "schedule", "training", "metrics", "source"),
    "optimizer": ("class", "kwargs"),
    "schedule": ("name", "interval", "params"),
    "training": TRAINING_KEYS,
}


def config_to_dict(config: Config) -> dict[str, Any]:
    """The YAML layout of ``config`` (plain lists and dicts, JSON-safe)."""
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in config.optimizer_kwargs.items()}
    data: dict[str, Any] = {
        "format": FORMAT,
        "optimizer": {"class": TORCH_PREFIX + config.optimizer, "kwargs": kwargs},
        "schedule": {"name": config.schedule, "interval": "step", "params": dict(config.schedule_params)},
        "training": {key: getattr(config, key) for key in TRAINING_KEYS},
    }
    if config.metrics:
        data["metrics"] = config.metrics
    if config.source:
        data["source"] = config.source
    return data


def config_from_dict(data: dict[str, Any], where: str = "config") -> Config:
    """The inverse of :func:`config_to_dict`, with a :class:`UserError` for anything malformed."""
    check_keys(where, data, SECTION_KEYS[""])
    if data.get("format") != FORMAT:
        raise UserError(f"{where}: format: {data.get('format')!r} is not allowed (this tuner reads format {FORMAT})")
    opt, sched, training = (_mapping(where, key, data.get(key)) for key in ("optimizer", "schedule", "training"))
    for key, section in (("optimizer", opt), ("schedule", sched), ("training", training)):
        check_keys(f"{where}: {key}", section, SECTION_KEYS[key])
    cls = str(opt.get("class")).removeprefix(TORCH_PREFIX)
    if cls not in optim.OPTIMIZERS:
        raise UserError(
            f"{where}: optimizer.class: {opt.get('class')!r} is not allowed "
            f"(allowed: {', '.join(TORCH_PREFIX + n for n in optim.OPTIMIZERS)})"
        )
    kwargs = _mapping(where, "optimizer.kwargs", opt.get("kwargs", {}))
    # torch's keyword names, betas whole (search spaces split it into beta1 and beta2).
    check_keys(f"{where}: optimizer.kwargs", kwargs, list(optim.torch_kwargs(cls, optim.optimizer_arguments(cls))))
    if isinstance(kwargs.get("betas"), list):
        kwargs["betas"] = tuple(kwargs["betas"])
    _check_kwarg_types(f"{where}: optimizer.kwargs", cls, kwargs)
    schedule = sched.get("name")
    if schedule not in optim.SCHEDULES:
        raise UserError(f"{where}: schedule.name: {schedule!r} is not allowed (allowed: {', '.join(optim.SCHEDULES)})")
    if sched.get("interval", "step") != "step":
        raise UserError(
            f"{where}: schedule.interval: {sched.get('interval')!r} is not allowed "
            "(step: the scheduler steps after every optimizer step)"
        )
    schedule_params = _mapping(where, "schedule.params", sched.get("params") or {})
    allowed = list(optim.schedule_arguments(schedule)) or ["none"]
    check_keys(f"{where}: schedule.params of {schedule}", schedule_params, allowed)
    for key, value in schedule_params.items():
        if not is_number(value) or not math.isfinite(value):
            raise UserError(f"{where}: schedule.params.{key}: {value!r} is not allowed (a finite number)")
    training = {"amp": "none"} | training  # files written before amp existed ran without it
    for key in TRAINING_KEYS:
        if key not in training:
            raise UserError(f"{where}: training: missing {key!r} (required: {', '.join(TRAINING_KEYS)})")
    checks = {
        "task": (isinstance(training["task"], str), "a task name or package.module:factory"),
        "task_args": (isinstance(training["task_args"], dict), "a mapping"),
        "epochs": (is_int(training["epochs"]), "an integer >= 1"),
        "batch_size": (is_int(training["batch_size"]), "an integer >= 1"),
        "seed": (is_int(training["seed"], 0, MAX_SEED), f"an integer from 0 to {MAX_SEED}"),
        "objective": (training["objective"] in ("loss", "metric"), "loss, metric"),
        "amp": (training["amp"] in AMP, ", ".join(AMP)),
    }
    for key, (ok, allowed_values) in checks.items():
        if not ok:
            raise UserError(f"{where}: training.{key}: {training[key]!r} is not allowed ({allowed_values})")
    config = Config(
        optimizer=cls,
        optimizer_kwargs=kwargs,
        schedule=schedule,
        schedule_params=schedule_params,
        metrics=data.get("metrics") or {},
        source=data.get("source") or {},
        **{key: training[key] for key in TRAINING_KEYS},
    )
    # torch's own checks, on a throwaway parameter and a run of typical length.
    try:
        optim.build_optimizer(cls, kwargs, [torch.zeros(1, requires_grad=True)])
    except (ValueError, TypeError, RuntimeError) as err:
        accepted = (
            "; ".join(f"{k} {optim.ALLOWED[k]}" for k in kwargs if k in optim.ALLOWED)
            or f"keyword arguments of torch.optim.{cls}"
        )
        raise UserError(
            f"{where}: optimizer.kwargs {kwargs}: not allowed by torch.optim.{cls}: {err} (allowed: {accepted})"
        ) from None
    try:
        optim.check_schedule(schedule, schedule_params)
    except (ValueError, TypeError, RuntimeError, ArithmeticError) as err:
        raise UserError(f"{where}: schedule.params {schedule_params}: not allowed for {schedule}: {err}") from None
    return config


def _check_kwarg_types(where: str, cls: str, kwargs: dict[str, Any]) -> None:
    """Each known keyword argument has the type of torch's default (``lr: true`` would train with lr = 1.0)."""
    defaults = optim.optimizer_arguments(cls)
    for key, value in kwargs.items():
        if key == "betas" and isinstance(value, tuple) and len(value) == 2:
            for i, beta in enumerate(value):
                check_type(f"{where}.betas[{i}]", beta, defaults[f"beta{i + 1}"])
        elif key in defaults:
            check_type(f"{where}.{key}", value, defaults[key])


def _mapping(where: str, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        raise UserError(f"{where}: {key}: missing (a mapping, as tuner study writes it)")
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key}: {value!r} is not allowed (a mapping, as tuner study writes it)")
    return dict(value)


def load_config(path: str | Path) -> Config:
    """Read a best-config YAML file."""
    path = Path(path)
    return config_from_dict(read_yaml(path, "config"), str(path))


def write_config(config: Config, path: Path) -> Path:
    """Write ``config`` to ``path`` (folders created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False))
    return path
