"""The value checks shared by every file tuner reads (numbers, integers, keys, types, names), each a one-line error."""

from __future__ import annotations

from typing import Any

from tuner.errors import UserError

# An experiment's and a search space's names become a folder (runs/<name>), file names (best-<space>.yaml),
# an MLflow experiment name (at most 500 characters) and an Optuna study name <name>/<space> (at most 512):
# 200 bytes of UTF-8 each keeps every one of them within its limit (file names: 255 bytes).
MAX_NAME_BYTES = 200


def check_keys(where: str, data: dict, allowed: list[str] | tuple[str, ...]) -> None:
    """Raise :class:`UserError` naming ``where``, the key and its value for the first key of ``data`` not in
    ``allowed`` (a misspelt key would otherwise be ignored, or reach torch as an unexpected keyword argument)."""
    for key, value in data.items():
        if key not in allowed:
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise UserError(f"{where}: unknown key {key!r} (value {shown}; allowed: {', '.join(allowed)})")


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number_hint(value: Any) -> str:
    """A hint for YAML 1.1's trap: ``1e-3`` and ``1.0e4`` are strings, ``1.0e-3`` and ``1.0e+4`` floats.

    Returns ``""`` unless ``value`` is text that Python reads as a number; else the hint, starting with ``"; "``.
    """
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
    """An int (not a bool) in ``[low, high]`` (default ``low`` 1; ``high`` None: no upper bound)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)


def check_type(where: str, value: Any, default: Any) -> None:
    """``value`` may stand where ``default`` does: any number (not a bool) for a number, a bool for a bool, text for
    text.

    Raises :class:`UserError` naming ``where``; any other default (None, a tuple, ...) accepts anything (the callee
    checks it).
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
        f"{where}: {value!r} is not allowed ({article} {kind}, like the default {default!r}{number_hint(value)})"
    )


def positive_int(where: str, value: Any) -> int:
    """``value`` if it is an integer >= 1 (not a bool); else :class:`UserError` naming ``where``."""
    if not is_int(value):
        raise UserError(f"{where}: {value!r} is not allowed (an integer >= 1)")
    return value


def check_name(where: str, name: str) -> None:
    """``name`` can name a folder, a file, an MLflow experiment and an Optuna study; else :class:`UserError`.

    Allowed: at most ``MAX_NAME_BYTES`` (200) bytes of UTF-8, no NUL character, not ``.`` or ``..``.
    """
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES or "\0" in name or name in (".", ".."):
        raise UserError(
            f"{where}: {name[:40]!r}{'...' if len(name) > 40 else ''} ({size} bytes) is not allowed as a name "
            f"(at most {MAX_NAME_BYTES} bytes of UTF-8, no NUL character, not '.' or '..': it names a folder, files, "
            "an MLflow experiment and Optuna studies)"
        )
