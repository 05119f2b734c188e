"""tuner: which optimizer, with which settings, trains this PyTorch model best.

Public API: :func:`run_experiment` runs an experiment as ``tuner study`` does
and returns each optimizer's best config, the summaries and every trial as a
DataFrame; :func:`load_config` reads an exported best-config YAML file; its
``build(params, steps_per_epoch=...)`` returns the exact ``torch.optim``
optimizer and learning-rate scheduler that the trial used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_config", "run_experiment"]

if TYPE_CHECKING:
    from pathlib import Path

    from tuner.config.experiment import Config, Experiment
    from tuner.run.experiment import Result


def load_config(path: str | Path) -> Config:
    """Read a best-config YAML file written by ``tuner study``."""
    # Imported here so that `import tuner` (and `--help`) stays light.
    from tuner.config.export import load_config as _load

    return _load(path)


def run_experiment(experiment: str | Path | Experiment | None = None, **options: Any) -> Result:
    """Run an experiment (a YAML file, a shipped name, or an Experiment) as ``tuner study`` does; see
    :func:`tuner.run.experiment.run_experiment` for the options (``quiet=True``: print only what went wrong) and
    :class:`tuner.run.experiment.Result` for what it returns. Raises :class:`tuner.errors.UserError` for bad input."""
    from tuner.run.experiment import run_experiment as _run

    return _run(experiment, **options)
