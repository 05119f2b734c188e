"""tuner: which optimizer, with which settings, trains this PyTorch model best.

Public API: :func:`load_config` reads an exported best-config YAML file; its
``build(params, steps_per_epoch=...)`` returns the exact ``torch.optim``
optimizer and learning-rate scheduler that the trial used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["__version__", "load_config"]

if TYPE_CHECKING:
    from pathlib import Path

    from tuner.config import Config


def load_config(path: str | Path) -> Config:
    """Read a best-config YAML file written by ``tuner study``."""
    # Imported here so that `import tuner` (and `--help`) stays light.
    from tuner.export import load_config as _load

    return _load(path)
