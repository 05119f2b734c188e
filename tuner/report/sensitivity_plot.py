"""``sensitivity.png``: every trial's objective against its learning rate, and learning rate × epsilon."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from tuner.report.data import Report
from tuner.report.drawing import (
    colors,
    draw_trials,
    finite,
    log_if_wide,
    note,
    place,
    shown,
    text_height,
    trial_handles,
    wide,
    wrapped,
)
from tuner.report.log_axis import LabelledLog, Plain, log_axis
from tuner.report.statistics import worth

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# Inches right of the last epsilon panel: a gap (0.2), the colour bar (0.15), its tick labels and its two-line label.
COLORBAR_RIGHT = 1.35


def draw_sensitivity(report: Report) -> Figure:
    """Objective against learning rate for every trial; below, learning rate × epsilon coloured by objective, for
    optimizers with an epsilon."""
    optimizers, color = report.optimizers, colors(report)
    with_eps = any(p.eps is not None for o in optimizers for p in o.points)
    rows = 2 if with_eps else 1
    fig = Figure(figsize=(3.8 * len(optimizers) + 1.5, 3.6 * rows + 1.0))
    # The learning-rate row shares its y axis; each epsilon panel keeps its own, with its tick labels
    # (a shared axis would drop them on a panel next to a blank one).
    axes = fig.subplots(rows, len(optimizers), squeeze=False)
    for ax in axes[0][1:]:
        ax.sharey(axes[0][0])
        ax.tick_params(which="both", labelleft=False)
    handles = trial_handles(report)
    title = f"Sensitivity: validation {report.label} of every trial against its learning rate" + (
        " (and epsilon, below)" if with_eps else ""
    )
    # Laid out before the colour bar, which takes its room from the epsilon panels as they stand. Bottom: the ticks and
    # label, then the legend's rows of three (0.2 inch each, with its frame); right: the colour bar's ticks and label;
    # between the columns: an epsilon panel's own y labels; between the rows: the ticks, label and title between them.
    place(
        fig,
        top=0.3 + text_height(title, 11) + text_height("", 12),
        bottom=0.75 + 0.2 * math.ceil(len(handles) / 3),
        right=COLORBAR_RIGHT if with_eps else 0.2,
        wspace=0.9 if with_eps else 0.3,
        hspace=0.95,
    )
    values = [v for o in optimizers for v in shown(report, o.points)]
    for ax, o in zip(axes[0], optimizers):
        points = [p for p in o.points if p.lr is not None]
        rates = [p.lr for p in o.points if p.lr is not None]
        draw_trials(ax, report, rates, points, color[o.name])
        if rates and min(rates) > 0:  # searched on a log scale: drawn on one, labelled within a decade too
            log_axis(ax, "x")
        ax.set(title=o.name, xlabel="learning rate")
        ax.title.set_color(color[o.name])
        ax.grid(alpha=0.3)
        if not points:
            note(ax, "no trial")
    log_if_wide(axes[0][0], [*values, report.untrained])
    axes[0][0].set_ylabel(f"validation {report.label}")
    fig.legend(handles=handles, loc="lower center", ncols=3, fontsize=8)
    if with_eps:
        _epsilon_planes(fig, axes[1], report)
    fig.suptitle(title, fontsize=11)
    return fig


def _epsilon_planes(fig: Figure, axes: list[Axes], report: Report) -> None:
    """Learning rate × epsilon per optimizer, coloured by what each trial is worth (one colour scale)."""
    worths = finite(worth(p.value, report.untrained, report.direction) for o in report.optimizers for p in o.points)
    norm = (LogNorm if wide(worths) else Normalize)(min(worths, default=0), max(worths, default=1))
    cmap = "viridis_r" if report.direction == "minimize" else "viridis"
    for ax, o in zip(axes, report.optimizers):
        # (learning rate, epsilon, value) of each trial with both
        points = [(p.lr, p.eps, p.value) for p in o.points if p.lr is not None and p.eps is not None]
        if not points:
            ax.axis("off")
            note(ax, f"{o.name}: no epsilon")
            continue
        valued = [(lr, eps, worth(v, report.untrained, report.direction)) for lr, eps, v in points if v is not None]
        if valued:
            lrs, epsilons, values = zip(*valued)
            ax.scatter(lrs, epsilons, c=values, cmap=cmap, norm=norm, s=24)
        missing = [(lr, eps) for lr, eps, value in points if value is None]
        if missing:
            ax.plot(
                *zip(*missing),
                linestyle="none",
                marker="x",
                color="red",
                label="diverged or failed",
            )
            ax.legend(fontsize=7)
        log_if_wide(ax, [lr for lr, _, _ in points], "x")
        log_if_wide(ax, [eps for _, eps, _ in points])
        ax.set(title=f"{o.name}: learning rate × epsilon", xlabel="learning rate", ylabel="epsilon")
        ax.grid(alpha=0.3)
    floor = "" if report.untrained is None else ", capped at the untrained model's"
    # The colour bar in the figure's right margin (see draw_sensitivity), as tall as the epsilon row, its label
    # wrapped to that height: the panels keep the width of those above them.
    row = axes[-1].get_position()
    width, height = fig.get_size_inches()
    cax = fig.add_axes((row.x1 + 0.2 / width, row.y0, 0.15 / width, row.height))
    label = wrapped(f"validation {report.label}{floor} (brighter is better)", row.height * height, 10)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, label=label)
    if isinstance(norm, LogNorm):
        bar.locator, bar.formatter = LabelledLog(cax, "y"), Plain()
        bar.minorlocator = NullLocator()
