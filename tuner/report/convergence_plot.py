"""``convergence.png``: tuning convergence, the best objective so far against trials, every trial by outcome."""

from __future__ import annotations

import math

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from tuner.report.data import Report
from tuner.report.drawing import (
    EDGE_LANE,
    at_edge,
    colors,
    draw_trials,
    legend_width,
    log_if_wide,
    make_room,
    place,
    shown,
    text_height,
    trial_handles,
)


def draw_convergence(report: Report) -> Figure:
    """Best-so-far objective against trials, one line per optimizer, every trial marked by outcome."""
    fig = Figure(figsize=(10, 5.5))
    ax = fig.subplots()
    color = colors(report)
    for lane, o in enumerate(report.optimizers):
        draw_trials(ax, report, list(range(1, len(o.points) + 1)), o.points, color[o.name], lane)
    log_if_wide(ax, [v for o in report.optimizers for v in shown(report, o.points)] + [report.untrained])
    edge_lanes = [lane for lane, o in enumerate(report.optimizers) if any(at_edge(report, p) for p in o.points)]
    if edge_lanes:
        make_room(ax, report.direction, 0.04 + EDGE_LANE * max(edge_lanes))
    low, high = ax.get_ylim()
    for o in report.optimizers:
        # A best so far worse than every value shown (worse than the untrained model) runs along the bad edge, inside
        # the axes.
        inside = [v if math.isnan(v) else min(max(v, low), high) for v in o.best_so_far]
        ax.step(range(1, len(o.points) + 1), inside, where="post", color=color[o.name], linewidth=2, scaley=False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(
        title=f"Tuning convergence: best validation {report.label} so far (lines) and every trial (markers)",
        xlabel="trials run",
        ylabel=f"validation {report.label}",
    )
    lines = [
        Line2D([], [], color=color[o.name], linewidth=2, label=f"{o.name}: best so far") for o in report.optimizers
    ]
    handles = lines + trial_handles(report)
    top = 0.25 + text_height(ax.get_title(), 12)
    # The legend starts at the axes' top, under the title: a long title runs past the axes into the right margin.
    fig.legend(handles=handles, loc="upper right", fontsize=8, bbox_to_anchor=(1, 1 - top / fig.get_figheight()))
    ax.grid(alpha=0.3)
    place(fig, top=top, right=0.15 + legend_width(handles, 8))
    return fig
