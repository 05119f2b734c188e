"""The output folder: whether a command may write there, checked before anything is created."""

from __future__ import annotations

import math
import os
from pathlib import Path

from tuner.errors import UserError


def check_writable_folder(path: Path) -> None:
    """``path`` is a folder, or can be made one, that we can write to; creates nothing."""
    # Room for the longest file written inside (a file name of up to 255 bytes) under the system's path limit.
    limit = os.pathconf("/", "PC_PATH_MAX") - 256 if hasattr(os, "pathconf") else math.inf
    if any(len(os.fsencode(part)) > 255 for part in path.parts) or len(os.fsencode(path.absolute())) > limit:
        shown = str(path) if len(str(path)) <= 60 else str(path)[:60] + "..."
        raise UserError(
            f"--out: {shown!r} is too long (allowed: folder names of at most 255 bytes, the whole path at most "
            f"{limit} bytes)"
        )
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(
            f"--out: {str(path)!r} cannot be a folder here: {str(existing)!r} is not a writable folder "
            "(allowed: a folder, created if missing)"
        )
