"""Best-config YAML, in and out (``format: 1``).

The file maps one-to-one onto torch: ``optimizer.class`` and ``optimizer.kwargs``
are the ``torch.optim`` class and its keyword arguments; ``schedule`` names the
schedule and its parameters (see :mod:`tuner.optim` for the torch objects it
becomes); ``training`` is what ``tuner train`` needs to re-run it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from tuner import optim
from tuner.config import Config, read_yaml
from tuner.errors import UserError

FORMAT = 1
TORCH_PREFIX = "torch.optim."
TRAINING_KEYS = ("task", "task_args", "epochs", "batch_size", "seed", "objective")


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
    if data.get("format") != FORMAT:
        raise UserError(f"{where}: format: {data.get('format')!r} is not allowed (this tuner reads format {FORMAT})")
    try:
        cls = data["optimizer"]["class"].removeprefix(TORCH_PREFIX)
        kwargs = dict(data["optimizer"]["kwargs"])
        schedule = data["schedule"]["name"]
        schedule_params = dict(data["schedule"].get("params") or {})
        training = {key: data["training"][key] for key in TRAINING_KEYS}
    except (KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{where}: missing or malformed entry {err} (expected the layout that tuner study writes)") from None
    if cls not in optim.OPTIMIZERS:
        raise UserError(f"{where}: optimizer.class: {cls!r} is not allowed (allowed: {', '.join(TORCH_PREFIX + n for n in optim.OPTIMIZERS)})")
    if schedule not in optim.SCHEDULES:
        raise UserError(f"{where}: schedule.name: {schedule!r} is not allowed (allowed: {', '.join(optim.SCHEDULES)})")
    if isinstance(kwargs.get("betas"), list):
        kwargs["betas"] = tuple(kwargs["betas"])
    for key in ("epochs", "batch_size"):
        if isinstance(training[key], bool) or not isinstance(training[key], int) or training[key] < 1:
            raise UserError(f"{where}: training.{key}: {training[key]!r} is not allowed (an integer >= 1)")
    if training["objective"] not in ("loss", "metric"):
        raise UserError(f"{where}: training.objective: {training['objective']!r} is not allowed (loss, metric)")
    config = Config(
        optimizer=cls,
        optimizer_kwargs=kwargs,
        schedule=schedule,
        schedule_params=schedule_params,
        metrics=data.get("metrics") or {},
        source=data.get("source") or {},
        **training,
    )
    # torch's own checks, on a throwaway parameter.
    try:
        optimizer = optim.build_optimizer(cls, kwargs, [torch.zeros(1, requires_grad=True)])
    except (ValueError, TypeError) as err:
        allowed = "; ".join(f"{k} {optim.ALLOWED[k]}" for k in kwargs if k in optim.ALLOWED) or f"keyword arguments of torch.optim.{cls}"
        raise UserError(f"{where}: optimizer.kwargs {kwargs}: not allowed by torch.optim.{cls}: {err} (allowed: {allowed})") from None
    try:
        optim.build_scheduler(schedule, schedule_params, optimizer, total_steps=config.epochs)
    except (ValueError, TypeError) as err:
        raise UserError(f"{where}: schedule.params {schedule_params}: not allowed for {schedule}: {err}") from None
    return config


def load_config(path: str | Path) -> Config:
    """Read a best-config YAML file."""
    path = Path(path)
    return config_from_dict(read_yaml(path, "config"), str(path))


def write_config(config: Config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False))
