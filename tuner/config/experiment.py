"""Experiments, search spaces and configs: read from YAML and validated up front.

Every check happens here, before any study exists, and fails with a
:class:`~tuner.errors.UserError` naming the file, the field, the value and
what is allowed.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tuner.config import strict_yaml
from tuner.errors import UserError
from tuner.train import optim

SCALES = ("linear", "log", "log1m")
SAMPLERS = ("tpe", "random", "qmc")
PRUNERS = ("median", "hyperband", "none")
# Mixed precision: none, or bf16 autocast of the forward pass and loss (CUDA only).
AMP = ("none", "bf16")


def shipped_dir(kind: str) -> Path:
    """The folder of shipped ``search_spaces`` or ``experiments``, wherever tuner is installed."""
    return Path(str(resources.files(f"tuner.{kind}")))


def shipped_names(kind: str) -> list[str]:
    return sorted(p.stem for p in shipped_dir(kind).glob("*.yaml"))


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """A YAML mapping from ``path``, read by :mod:`tuner.config.strict_yaml` (every file tuner reads comes through here)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"{path}: cannot read {what}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: cannot read {what}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        data = strict_yaml.load(text)
    except strict_yaml.AmbiguousYAML as err:
        mark = err.problem_mark
        raise UserError(f"{path}: line {mark.line + 1}, column {mark.column + 1}: {err.problem}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}: malformed YAML{at}: {problem}") from None
    if data is None:
        raise UserError(f"{path}: the {what} file is empty (expected a mapping of keys to values)")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def _check_keys(where: str, data: dict, allowed: list[str] | tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            raise UserError(f"{where}: unknown key {key!r} (allowed: {', '.join(allowed)})")


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text_number_hint(value: Any) -> str:
    """A hint for YAML 1.1's trap: ``1e-3`` and ``1.0e4`` are strings, ``1.0e-3`` and ``1.0e+4`` floats."""
    try:
        float(value)
    except (TypeError, ValueError):
        return ""
    return (
        "; YAML reads this as text: write the number with a dot and a signed exponent, like 1.0e-3 or 1.0e+4"
        if isinstance(value, str)
        else ""
    )


def is_int(value: Any, low: int = 1, high: int | None = None) -> bool:
    """An int (not a bool) in ``[low, high]``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)


def check_type(where: str, value: Any, default: Any) -> None:
    """``value`` may stand where ``default`` does: any number (not a bool) for a number, a bool for a bool, text for text.

    Raises :class:`UserError` naming ``where``; any other default (None, a tuple, ...) accepts anything (the callee checks it).
    """
    if is_number(default):
        ok = is_number(value)
    elif isinstance(default, (bool, str)):
        ok = type(value) is type(default)
    else:
        ok = True
    if ok:
        return
    kind = type(default).__name__
    article = "an" if kind[0] in "aeiou" else "a"
    raise UserError(
        f"{where}: {value!r} is not allowed ({article} {kind}, like the default {default!r}{_text_number_hint(value)})"
    )


def _positive_int(where: str, value: Any) -> int:
    if not is_int(value):
        raise UserError(f"{where}: {value!r} is not allowed (an integer >= 1)")
    return value


@dataclass(frozen=True)
class Param:
    """One hyperparameter of a search space.

    Either fixed (``value``), a range ``[low, high]`` sampled on a ``scale``
    (``linear``; ``log``; ``log1m``: 1 - x on a log scale, for betas and
    momenta near 1), or a list of ``choices``.
    """

    name: str
    value: Any = None
    low: float | None = None
    high: float | None = None
    scale: str = "linear"
    integer: bool = False
    choices: tuple | None = None

    @property
    def searched(self) -> bool:
        return self.low is not None or self.choices is not None

    def candidates(self) -> list[Any]:
        """The extreme values this parameter can take (checked against torch up front)."""
        if self.choices is not None:
            return list(self.choices)
        if self.low is not None:
            return [self.low, self.high]
        return [self.value]

    def typical(self) -> Any:
        """A value from the middle of the range (on its scale), the first choice, or the fixed value."""
        if self.choices is not None:
            return self.choices[0]
        if self.low is None:
            return self.value
        if self.scale == "log":
            return math.sqrt(self.low * self.high)
        if self.scale == "log1m":
            return 1.0 - math.sqrt((1.0 - self.low) * (1.0 - self.high))
        middle = (self.low + self.high) / 2
        return round(middle) if self.integer else middle


def parse_param(where: str, name: str, raw: Any) -> Param:
    """A :class:`Param` from its YAML form: a scalar, ``{low, high[, scale, int]}``, ``{choices}`` or ``{value}``."""
    if not isinstance(raw, dict):
        if isinstance(raw, (list, tuple)):
            raise UserError(f"{where}: a list is not allowed; use {{choices: [...]}} to search, or one value")
        return Param(name, value=raw)
    _check_keys(where, raw, ("low", "high", "scale", "int", "choices", "value"))
    if "value" in raw:
        if len(raw) > 1:
            raise UserError(f"{where}: 'value' fixes the parameter and cannot go with {sorted(set(raw) - {'value'})}")
        return Param(name, value=raw["value"])
    if "choices" in raw:
        choices = raw["choices"]
        if len(raw) > 1:
            raise UserError(f"{where}: 'choices' cannot go with {sorted(set(raw) - {'choices'})}")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}.choices: {choices!r} is not allowed (a non-empty list)")
        return Param(name, choices=tuple(choices))
    if "low" not in raw or "high" not in raw:
        raise UserError(f"{where}: a searched range needs both 'low' and 'high' (or 'choices', or 'value')")
    low, high, scale = raw["low"], raw["high"], raw.get("scale", "linear")
    integer = raw.get("int", False)
    for key, bound in (("low", low), ("high", high)):
        if not is_number(bound) or not math.isfinite(bound):
            raise UserError(f"{where}.{key}: {bound!r} is not allowed (a finite number{_text_number_hint(bound)})")
    if scale not in SCALES:
        raise UserError(f"{where}.scale: {scale!r} is not allowed (allowed: {', '.join(SCALES)})")
    if not isinstance(integer, bool):
        raise UserError(f"{where}.int: {integer!r} is not allowed (true or false)")
    if integer and not (isinstance(low, int) and isinstance(high, int)):
        raise UserError(f"{where}: int: true needs integer bounds, got low={low!r}, high={high!r}")
    if low >= high:
        kind = "empty" if low == high else "inverted"
        raise UserError(
            f"{where}: {kind} range low={low!r}, high={high!r} (allowed: low < high; use 'value' to fix it)"
        )
    if scale == "log" and low <= 0:
        raise UserError(f"{where}.low: {low!r} is not allowed on a log scale (low > 0)")
    if scale == "log1m" and high >= 1:
        raise UserError(
            f"{where}.high: {high!r} is not allowed with scale log1m, which samples 1 - x on a log scale (high < 1)"
        )
    if integer and scale != "linear":
        raise UserError(f"{where}: int: true is only allowed with scale linear")
    return Param(name, low=low, high=high, scale=scale, integer=integer)


@dataclass(frozen=True)
class SearchSpace:
    """Which keyword arguments of one ``torch.optim`` class are searched, and how."""

    name: str
    optimizer: str
    params: tuple[Param, ...]
    source: str


def load_space(path: Path, name: str | None = None) -> SearchSpace:
    """Read and validate a search-space file (``search_spaces/adam.yaml`` or a user's copy)."""
    where = str(path)
    data = read_yaml(path, "search space")
    _check_keys(where, data, ("optimizer", "params"))
    cls = data.get("optimizer")
    if cls not in optim.OPTIMIZERS:
        raise UserError(f"{where}: optimizer: {cls!r} is not allowed (allowed: {', '.join(optim.OPTIMIZERS)})")
    raw_params = data.get("params") or {}
    if not isinstance(raw_params, dict):
        raise UserError(f"{where}: params: expected a mapping of torch.optim.{cls} arguments")
    allowed = optim.optimizer_arguments(cls)
    params = []
    for key, raw in raw_params.items():
        if key not in allowed:
            raise UserError(
                f"{where}: params: unknown argument {key!r} of torch.optim.{cls} (allowed: {', '.join(allowed)})"
            )
        params.append(parse_param(f"{where}: params.{key}", key, raw))
    _probe_optimizer(f"{where}: params", cls, params)
    return SearchSpace(name or path.stem, cls, tuple(params), where)


def _probe_optimizer(where: str, cls: str, params: list[Param]) -> None:
    """Let torch itself judge every extreme value: its checks are the truth (beta in [0, 1), lr >= 0, ...).

    Each value is tried with the other parameters at their typical values.
    """
    import torch

    defaults = optim.optimizer_arguments(cls)
    typical = {p.name: p.typical() for p in params}
    for param in params:
        default = defaults[param.name]
        for value in param.candidates():
            check_type(f"{where}.{param.name}", value, default)
            kwargs = optim.torch_kwargs(cls, typical | {param.name: value})
            try:
                optim.build_optimizer(cls, kwargs, [torch.zeros(1, requires_grad=True)])
            except (ValueError, TypeError, RuntimeError) as err:
                allowed = optim.ALLOWED.get(param.name, f"what torch.optim.{cls} accepts")
                raise UserError(
                    f"{where}.{param.name}: {value!r} is not allowed by torch.optim.{cls}: {err} (allowed: {param.name} {allowed})"
                ) from None


@dataclass(frozen=True)
class ScheduleSpace:
    """The schedules to choose from, each with its own parameters."""

    params: dict[str, tuple[Param, ...]]
    source: str


def load_schedules(path: Path, names: list[str] | None = None, where_names: str = "schedules") -> ScheduleSpace:
    """Read ``schedules.yaml`` and keep ``names`` (all of them when None)."""
    where = str(path)
    data = read_yaml(path, "schedules")
    _check_keys(where, data, list(optim.SCHEDULES))
    chosen = list(data) if names is None else names
    spaces: dict[str, tuple[Param, ...]] = {}
    for name in chosen:
        if name not in data:
            raise UserError(f"{where_names}: {name!r} is not allowed (allowed: {', '.join(data)})")
        raw = data[name] or {}
        if not isinstance(raw, dict):
            raise UserError(f"{where}: {name}: expected a mapping of its parameters")
        arguments = optim.schedule_arguments(name)
        _check_keys(f"{where}: {name}", raw, list(arguments) or ["(none)"])
        for key, default in arguments.items():
            if default is inspect.Parameter.empty and key not in raw:
                raise UserError(f"{where}: {name}: missing required parameter {key!r}")
        params = tuple(parse_param(f"{where}: {name}.{key}", key, value) for key, value in raw.items())
        _probe_schedule(f"{where}: {name}", name, params)
        spaces[name] = params
    return ScheduleSpace(spaces, where)


def _probe_schedule(where: str, name: str, params: tuple[Param, ...]) -> None:
    for param in params:
        for value in param.candidates():
            if not is_number(value) or not math.isfinite(value):
                raise UserError(
                    f"{where}.{param.name}: {value!r} is not allowed (a finite number{_text_number_hint(value)})"
                )
    for param in params:
        for value in param.candidates():
            try:
                optim.check_schedule(name, {p.name: p.typical() for p in params} | {param.name: value})
            except (ValueError, TypeError, RuntimeError, ArithmeticError) as err:
                raise UserError(f"{where}.{param.name}: {value!r} is not allowed: {err}") from None


def find_space(ref: str, base: Path, where: str) -> SearchSpace:
    """A search space by shipped name (``adam``) or by path (relative to ``base``)."""
    if ref in shipped_names("search_spaces") and ref != "schedules":
        return load_space(shipped_dir("search_spaces") / f"{ref}.yaml")
    path = Path(ref).expanduser()
    path = path if path.is_absolute() else base / path
    if ref.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise UserError(
                f"{where}: {ref!r}: no such file ({path}; allowed: a search-space file, or a shipped space: {', '.join(_shipped_spaces())})"
            )
        return load_space(path)
    shipped = _shipped_spaces()
    raise UserError(f"{where}: {ref!r} is neither a shipped search space ({', '.join(shipped)}) nor a .yaml file")


def _shipped_spaces() -> list[str]:
    return [n for n in shipped_names("search_spaces") if n != "schedules"]


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
# An experiment's and a search space's names become a folder (runs/<name>), file names (best-<space>.yaml),
# an MLflow experiment name (at most 500 characters) and an Optuna study name <name>/<space> (at most 512):
# 200 bytes of UTF-8 each keeps every one of them within its limit (file names: 255 bytes).
MAX_NAME_BYTES = 200


def check_name(where: str, name: str) -> None:
    """``name`` can name a folder, a file, an MLflow experiment and an Optuna study; else :class:`UserError`."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES or "\0" in name or name in (".", ".."):
        raise UserError(
            f"{where}: {name[:40]!r}{'...' if len(name) > 40 else ''} ({size} bytes) is not allowed as a name "
            f"(at most {MAX_NAME_BYTES} bytes of UTF-8, no NUL character, not '.' or '..': it names a folder, files, "
            "an MLflow experiment and Optuna studies)"
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
    _check_keys(where, data, EXPERIMENT_KEYS)
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
        _positive_int(at("batch_size"), batch_size)
    seed = data["seed"]
    if not is_int(seed, 0, MAX_SEED):
        raise UserError(f"{at('seed')}: {seed!r} is not allowed (an integer from 0 to {MAX_SEED})")
    objective, direction = data.get("objective", "metric"), None
    if isinstance(objective, dict):
        _check_keys(at("objective"), objective, ("metric", "direction"))
        objective, direction = objective.get("metric", "metric"), objective.get("direction")
        if direction not in (None, "minimize", "maximize"):
            raise UserError(f"{at('objective')}.direction: {direction!r} is not allowed (minimize, maximize)")
    if not isinstance(objective, str):
        raise UserError(f"{at('objective')}: {objective!r} is not allowed ('loss', 'metric' or the task's metric name)")
    target = data.get("target")
    if target is not None and not (is_number(target) and math.isfinite(target)):
        raise UserError(
            f"{at('target')}: {target!r} is not allowed (a finite number in the objective's units{_text_number_hint(target)})"
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
        trials=_positive_int(at("trials"), data["trials"]),
        epochs=_positive_int(at("epochs"), data["epochs"]),
        batch_size=batch_size,
        seed=seed,
        sampler=_component(at("sampler"), data.get("sampler"), SAMPLERS, "tpe"),
        pruner=_component(at("pruner"), data.get("pruner"), PRUNERS, "median"),
        objective=objective,
        direction=direction,
        final_seeds=_positive_int(at("final_seeds"), data.get("final_seeds", 3)),
        target=target,
        source=where,
        origins={key: at(key) for key in EXPERIMENT_KEYS},
        population=_positive_int(at("population"), data.get("population", 1)),
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
                f"steps_per_epoch={steps_per_epoch}: {self.epochs * steps_per_epoch} steps are too few "
                f"for schedule {self.schedule} {self.schedule_params}"
            ) from None
        return optimizer, scheduler
