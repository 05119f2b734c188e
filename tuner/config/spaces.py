"""Search spaces: the hyperparameters of one torch.optim class and of the schedules, read from YAML and checked by
torch itself up front."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.config.checks import check_keys, check_type, is_number, number_hint
from tuner.config.files import read_yaml, shipped_dir, shipped_names
from tuner.errors import UserError
from tuner.train import optim

SCALES = ("linear", "log", "log1m")


@dataclass(frozen=True)
class Param:
    """One hyperparameter of a search space.

    Either fixed (``value``), a range ``[low, high]`` sampled on a ``scale``
    (``linear``, the default; ``log``; ``log1m``: 1 - x on a log scale, for betas
    and momenta near 1), integers only if ``integer``, or a list of ``choices``.
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
        """Whether trials sample this parameter (a range or choices), rather than fix it."""
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
        if self.low is None or self.high is None:
            return self.value
        if self.scale == "log":
            return math.sqrt(self.low * self.high)
        if self.scale == "log1m":
            return 1.0 - math.sqrt((1.0 - self.low) * (1.0 - self.high))
        middle = (self.low + self.high) / 2
        return round(middle) if self.integer else middle


def parse_param(where: str, name: str, raw: Any) -> Param:
    """A :class:`Param` from its YAML form: a scalar, ``{low, high[, scale, int]}``, ``{choices}`` or ``{value}``.

    Raises :class:`UserError` naming ``where`` for an unknown key, a list, keys that cannot go together, missing or
    non-finite bounds, an unknown scale, an empty or inverted range, or bounds outside the scale's domain.
    """
    if not isinstance(raw, dict):
        if isinstance(raw, (list, tuple)):
            raise UserError(f"{where}: a list is not allowed; use {{choices: [...]}} to search, or one value")
        return Param(name, value=raw)
    check_keys(where, raw, ("low", "high", "scale", "int", "choices", "value"))
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
            raise UserError(f"{where}.{key}: {bound!r} is not allowed (a finite number{number_hint(bound)})")
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
    """Which keyword arguments of one ``torch.optim`` class are searched, and how; ``source``: its file."""

    name: str
    optimizer: str
    params: tuple[Param, ...]
    source: str


def load_space(path: Path, name: str | None = None) -> SearchSpace:
    """Read and validate a search-space file (``search_spaces/adam.yaml`` or a user's copy), named ``name`` (default:
    the file's stem).

    Raises :class:`UserError` naming the file and the field for an unknown optimizer or argument, a malformed
    parameter (:func:`parse_param`), or a value torch refuses.
    """
    where = str(path)
    data = read_yaml(path, "search space")
    check_keys(where, data, ("optimizer", "params"))
    cls = data.get("optimizer")
    if cls not in optim.OPTIMIZERS:
        raise UserError(f"{where}: optimizer: {cls!r} is not allowed (allowed: {', '.join(optim.OPTIMIZERS)})")
    raw_params = data.get("params") or {}
    if not isinstance(raw_params, dict):
        raise UserError(f"{where}: params: expected a mapping of torch.optim.{cls} arguments")
    check_keys(f"{where}: params of torch.optim.{cls}", raw_params, list(optim.optimizer_arguments(cls)))
    params = [parse_param(f"{where}: params.{key}", key, raw) for key, raw in raw_params.items()]
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
                    f"{where}.{param.name}: {value!r} is not allowed by torch.optim.{cls}: {err} "
                    f"(allowed: {param.name} {allowed})"
                ) from None


@dataclass(frozen=True)
class ScheduleSpace:
    """The schedules to choose from, each with its own parameters; ``source``: its file."""

    params: dict[str, tuple[Param, ...]]
    source: str


def load_schedules(path: Path, names: list[str] | None = None, where_names: str = "schedules") -> ScheduleSpace:
    """Read ``schedules.yaml`` and keep ``names`` (all of them when None); ``where_names`` names where ``names`` came
    from in messages.

    Raises :class:`UserError` for a name the file lacks, an unknown or missing schedule parameter, or a value the
    schedule refuses.
    """
    where = str(path)
    data = read_yaml(path, "schedules")
    check_keys(where, data, list(optim.SCHEDULES))
    chosen = list(data) if names is None else names
    spaces: dict[str, tuple[Param, ...]] = {}
    for name in chosen:
        if name not in data:
            raise UserError(f"{where_names}: {name!r} is not allowed (allowed: {', '.join(data)})")
        raw = data[name] or {}
        if not isinstance(raw, dict):
            raise UserError(f"{where}: {name}: expected a mapping of its parameters")
        arguments = optim.schedule_arguments(name)
        check_keys(f"{where}: {name}", raw, list(arguments) or ["(none)"])
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
                raise UserError(f"{where}.{param.name}: {value!r} is not allowed (a finite number{number_hint(value)})")
    for param in params:
        for value in param.candidates():
            try:
                optim.check_schedule(name, {p.name: p.typical() for p in params} | {param.name: value})
            except (ValueError, TypeError, RuntimeError, ArithmeticError) as err:
                raise UserError(f"{where}.{param.name}: {value!r} is not allowed: {err}") from None


def find_space(ref: str, base: Path, where: str) -> SearchSpace:
    """A search space by shipped name (``adam``) or by path (relative to ``base``); ``where`` names the reference.

    Raises :class:`UserError` if ``ref`` is neither a shipped space nor an existing ``.yaml`` file.
    """
    if ref in shipped_names("search_spaces") and ref != "schedules":
        return load_space(shipped_dir("search_spaces") / f"{ref}.yaml")
    path = Path(ref).expanduser()
    path = path if path.is_absolute() else base / path
    if ref.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise UserError(
                f"{where}: {ref!r}: no such file ({path}; allowed: a search-space file, "
                f"or a shipped space: {', '.join(_shipped_spaces())})"
            )
        return load_space(path)
    shipped = _shipped_spaces()
    raise UserError(f"{where}: {ref!r} is neither a shipped search space ({', '.join(shipped)}) nor a .yaml file")


def _shipped_spaces() -> list[str]:
    return [n for n in shipped_names("search_spaces") if n != "schedules"]
