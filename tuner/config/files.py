"""The YAML files tuner reads: the shipped ones, wherever tuner is installed, and any file read strictly."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tuner.config import strict_yaml
from tuner.errors import UserError


def shipped_dir(kind: str) -> Path:
    """The folder of shipped ``search_spaces`` or ``experiments`` (``kind``), wherever tuner is installed."""
    return Path(str(resources.files(f"tuner.{kind}")))


def shipped_names(kind: str) -> list[str]:
    """The names (file stems, sorted) of the shipped ``search_spaces`` or ``experiments`` (``kind``)."""
    return sorted(p.stem for p in shipped_dir(kind).glob("*.yaml"))


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """A YAML mapping from ``path``, read by :mod:`tuner.config.strict_yaml` (every file tuner reads comes through
    here); ``what`` names the kind of file in messages (``experiment``).

    Raises :class:`UserError` naming ``path`` if the file cannot be read, is not UTF-8, is malformed or ambiguous
    YAML (with its line and column), is empty, or is not a mapping.
    """
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
        assert mark is not None  # set by every AmbiguousYAML the loader raises
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
