"""The report's figures: each one's name and what it shows; :func:`draw_all` draws and saves them as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuner.report.data import Report

DPI = 100
# zlib's fastest level: the PNGs come out about 8% larger and take 30% less time to encode (sensitivity.png: 32 ms
# instead of 45, of the figure's 0.3 s).
PNG = {"compress_level": 1}

# Each figure's name (plots/<name>.png) and what it shows, in the order summary.md lists them.
FIGURES: dict[str, str] = {
    "importance": "which hyperparameters mattered, per optimizer",
    "convergence": "tuning convergence: best-so-far objective against trials, every trial by outcome",
    "learning_curves": "training convergence: validation curves of each best config, mean ± sd over the final seeds",
    "budget": "expected best objective against the number of trials: which optimizer is easier to tune",
    "sensitivity": "objective against learning rate for every trial; learning rate × epsilon where there is one",
    "step_sizes": "effective per-parameter learning rate over training, per optimizer",
}


def draw_all(report: Report, folder: Path) -> list[Path]:
    """Every figure of :data:`FIGURES` as ``folder/<name>.png``, in that order; the paths written. Raises ``OSError``
    when ``folder`` cannot be written."""
    # matplotlib and the drawing modules are imported here, when the report is drawn, not when `tuner study` starts
    # (about half a second): the first trial does not wait for them.
    import matplotlib

    from tuner.report.budget_plot import draw_budget
    from tuner.report.convergence_plot import draw_convergence
    from tuner.report.importance_plot import draw_importance
    from tuner.report.learning_curves_plot import draw_learning_curves
    from tuner.report.sensitivity_plot import draw_sensitivity
    from tuner.report.step_size_plot import draw_step_sizes

    draw = {
        "importance": draw_importance,
        "convergence": draw_convergence,
        "learning_curves": draw_learning_curves,
        "budget": draw_budget,
        "sensitivity": draw_sensitivity,
        "step_sizes": draw_step_sizes,
    }
    paths = []
    # Axes titles at a fixed height: no axis has ticks on top, and placing them automatically measures every axis's
    # ticks once more before drawing.
    with matplotlib.rc_context({"axes.titley": 1.0}):
        for name in FIGURES:
            path = folder / f"{name}.png"
            draw[name](report).savefig(path, dpi=DPI, pil_kwargs=PNG)
            paths.append(path)
    return paths
