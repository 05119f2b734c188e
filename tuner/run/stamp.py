"""Whether an output folder is up to date: ``.tuner-outputs.json`` in it says what its files were made from.

A ``tuner study`` rerun that trains nothing (its budget was met before) leaves the folder as it is when the stamp
matches what the outputs would be made from now and every file it lists exists; anything else (a new trial, a new
final evaluation or study, other arguments, another tuner version or report format, a file deleted) redraws.
The stamp is removed before a folder is rewritten and written once every file is, so a rewrite cut short leaves none.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner import __version__

STAMP = ".tuner-outputs.json"
# The report's format: raised when the same studies give other files (a figure added, a table changed).
FORMAT = 1

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def made_from(studies: list[optuna.Study], arguments: dict[str, Any]) -> dict[str, Any]:
    """What the outputs of ``studies`` are made from: each study's finished trials (how many, and when the last one
    finished), a digest of its attributes (its setup, final evaluation and measured numbers), tuner's version, the
    report's format, and the ``arguments`` that shape the files (JSON-able: target, importance evaluator, source)."""
    made = []
    for study in studies:
        trials = study.get_trials(deepcopy=False, states=FINISHED)
        last = max((t.datetime_complete for t in trials if t.datetime_complete is not None), default=None)
        attributes = json.dumps(study.user_attrs, sort_keys=True, default=str).encode()
        made.append(
            {
                "study": study.study_name,
                "trials": len(trials),
                "last_finished": None if last is None else last.isoformat(),
                "attributes": hashlib.sha256(attributes).hexdigest(),
            }
        )
    return {"tuner": __version__, "format": FORMAT, "studies": made, "arguments": arguments}


def up_to_date(out: Path, made: dict[str, Any]) -> bool:
    """Whether ``out``'s stamp says its files were made from ``made`` and each of them exists."""
    try:
        stamp = json.loads((out / STAMP).read_text())
        return bool(stamp["made_from"] == made and all((out / name).is_file() for name in stamp["files"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def files(out: Path) -> list[str]:
    """The files ``out``'s stamp lists (relative to it): what tuner wrote there last; none without a stamp."""
    try:
        names = json.loads((out / STAMP).read_text())["files"]
        return [name for name in names if isinstance(name, str)]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def clear(out: Path) -> None:
    """Remove ``out``'s stamp: its files are about to change."""
    (out / STAMP).unlink(missing_ok=True)


def write(out: Path, made: dict[str, Any], files: list[Path]) -> None:
    """Stamp ``out``: ``files`` (inside it) were made from ``made``. Written whole or not at all."""
    temporary = out / (STAMP + ".tmp")
    names = [str(path.relative_to(out)) for path in files]
    temporary.write_text(json.dumps({"made_from": made, "files": names}, indent=1) + "\n")
    os.replace(temporary, out / STAMP)
