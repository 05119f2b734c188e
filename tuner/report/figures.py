"""The report's figures: each one's name, drawing function and what it shows; :func:`draw_all` saves them as PNG."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from matplotlib.figure import Figure

from tuner.report.budget_plot import draw_budget
from tuner.report.convergence_plot import draw_convergence
from tuner.report.data import Report
from tuner.report.importance_plot import draw_importance
from tuner.report.learning_curves_plot import draw_learning_curves
from tuner.report.sensitivity_plot import draw_sensitivity
from tuner.report.step_size_plot import draw_step_sizes

DPI = 100

FIGURES: dict[str, tuple[Callable[[Report], Figure], str]] = {
    "importance": (draw_importance, "which hyperparameters mattered, per optimizer"),
    "convergence": (
        draw_convergence,
        "tuning convergence: best-so-far objective against trials, every trial by outcome",
    ),
    "learning_curves": (
        draw_learning_curves,
        "training convergence: validation curves of each best config, mean ± sd over the final seeds",
    ),
    "budget": (draw_budget, "expected best objective against the number of trials: which optimizer is easier to tune"),
    "sensitivity": (draw_sensitivity, "objective against learning rate for every trial; learning rate × epsilon"),
    "step_sizes": (
        draw_step_sizes,
        "effective per-parameter learning rate over training, per optimizer",
    ),
}


def draw_all(report: Report, folder: Path) -> list[Path]:
    """Every figure of :data:`FIGURES` as ``folder/<name>.png``; the paths written."""
    paths = []
    for name, (draw, _) in FIGURES.items():
        path = folder / f"{name}.png"
        draw(report).savefig(path, dpi=DPI)
        paths.append(path)
    return paths
