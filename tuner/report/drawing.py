"""What the report's figures share: one colour per optimizer, log axes where values span decades, trials drawn by
outcome, wrapped titles, notes in empty panels.

Figures are ``matplotlib.figure.Figure`` objects, without pyplot (no global figure registry, no GUI backend), saved as
PNG by matplotlib's Agg renderer. Each optimizer has one colour, the same in every figure.

Trials are drawn by outcome: complete filled, pruned hollow (at the last value they reported). Trials worse than the
untrained model (a loss of 1e19 says no more than one of 3) are drawn as triangles at the edge where bad values lie,
diverged and failed ones (no value) as crosses there, so that the axis shows the values that matter.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tuner.report.log_axis import log_axis
from tuner.report.statistics import worth

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from tuner.report.data import Report, TrialPoint

MARKERS = {"diverged": "x", "failed": "+"}  # trials without a value


def colors(report: Report) -> dict[str, str]:
    """One colour per optimizer (matplotlib's default cycle, in the report's order)."""
    return {o.name: f"C{i % 10}" for i, o in enumerate(report.optimizers)}


def finite(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def wide(values: list[float]) -> bool:
    """Positive values that span a decade or more."""
    return bool(values) and min(values) > 0 and max(values) >= 10 * min(values)


def log_if_wide(ax: Axes, values: Iterable[float | None], axis: Literal["x", "y"] = "y") -> None:
    """A log scale on ``axis`` (labelled and gridded by :func:`tuner.report.log_axis.log_axis`) when the values are
    positive and span a decade or more."""
    if wide(finite(values)):
        log_axis(ax, axis)


def shown(report: Report, points: Iterable[TrialPoint]) -> list[float]:
    """The values drawn inside the axes: those no worse than the untrained model."""
    return [
        p.value for p in points if p.value is not None and worth(p.value, report.untrained, report.direction) == p.value
    ]


# Axes fraction between the rows of markers that several optimizers put at the bad edge of one panel.
EDGE_LANE = 0.035


def draw_trials(ax: Axes, report: Report, xs: list[float], points: list[TrialPoint], color: str, lane: int = 0) -> None:
    """Each trial at (x, value) by outcome; those worse than the untrained model or without a value at the bad edge,
    in row ``lane`` of it (one row per optimizer sharing the panel, so that no marker hides another's)."""
    inset = 0.02 + EDGE_LANE * lane
    edge = 1 - inset if report.direction == "minimize" else inset  # axes coordinates
    beyond = "^" if report.direction == "minimize" else "v"
    groups: dict[tuple[str, bool, bool], list[tuple[float, float]]] = {}  # (marker, filled, at the edge): points
    for x, p in zip(xs, points):
        filled = p.outcome == "complete"
        if p.value is None:
            groups.setdefault((MARKERS.get(p.outcome, "x"), filled, True), []).append((x, edge))
        elif at_edge(report, p):
            groups.setdefault((beyond, filled, True), []).append((x, edge))
        else:
            groups.setdefault(("o", filled, False), []).append((x, p.value))
    for (marker, filled, on_edge), xy in groups.items():
        where = {"transform": ax.get_xaxis_transform(), "clip_on": False} if on_edge else {"alpha": 0.8}
        ax.plot(
            *zip(*xy),
            linestyle="none",
            marker=marker,
            markersize=6,
            color=color,
            markerfacecolor=color if filled else "none",
            **where,
        )
    if report.untrained is not None:
        ax.axhline(report.untrained, color="grey", linestyle=":", linewidth=1)


def at_edge(report: Report, p: TrialPoint) -> bool:
    """Whether :func:`draw_trials` draws ``p`` at the bad edge: no value, or worse than the untrained model."""
    return p.value is None or worth(p.value, report.untrained, report.direction) != p.value


def make_room(ax: Axes, direction: str, share: float) -> None:
    """Widen the y axis on its bad side (the top when minimizing) so that the outer ``share`` of its height holds no
    value drawn so far: the rows of edge markers then lie beyond every value, the untrained line included."""
    log = ax.get_yscale() == "log"
    low, high = (math.log10(v) for v in ax.get_ylim()) if log else ax.get_ylim()
    grown = (high - low) / (1 - share) - (high - low)
    low, high = (low, high + grown) if direction == "minimize" else (low - grown, high)
    ax.set_ylim(*((10**low, 10**high) if log else (low, high)))


def trial_handles(report: Report) -> list[Line2D]:
    """Legend entries for :func:`draw_trials`, in grey."""
    edge = "top" if report.direction == "minimize" else "bottom"

    def marker(symbol: str, label: str, face: str = "grey") -> Line2D:
        return Line2D([], [], linestyle="none", color="grey", marker=symbol, markerfacecolor=face, label=label)

    handles = [
        marker("o", "complete"),
        marker("o", "pruned (its last value)", face="none"),
        marker("x", f"diverged (no value: at the {edge})"),
        marker("+", f"failed (at the {edge})"),
    ]
    if report.untrained is not None:
        beyond = "^" if report.direction == "minimize" else "v"
        handles += [
            marker(beyond, f"worse than untrained (at the {edge})"),
            Line2D([], [], linestyle=":", color="grey", label=f"untrained model ({report.untrained:.4g})"),
        ]
    return handles


def wrapped(text: str, inches: float, points: float) -> str:
    """``text`` with each line broken to fit ``inches`` of width at a font size of ``points`` (mathtext lines, with
    ``$``, are left whole: a break inside one would not render)."""
    width = max(20, int(inches * 120 / points))  # about 0.6 em a character: 72 / (0.6 * points) characters an inch
    return "\n".join(line if "$" in line else textwrap.fill(line, width) for line in text.split("\n"))


def note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="dimgrey")


def text_height(text: str, points: float) -> float:
    """Inches of height that ``text`` takes at a font size of ``points``: one line spacing (1.2 em, matplotlib's) a
    line."""
    return (text.count("\n") + 1) * 1.2 * points / 72


def place(
    fig: Figure,
    *,
    left: float = 0.8,
    right: float = 0.2,
    top: float = 0.5,
    bottom: float = 0.55,
    wspace: float = 0.6,
    hspace: float = 0.8,
) -> None:
    """Lay ``fig``'s grid of axes out with these margins and gaps, in inches.

    Instead of constrained layout, which measures every axis's ticks and labels twice before the figure is drawn (most
    of a report's drawing time); each figure states what its margins hold. ``wspace`` and ``hspace``: between columns
    and rows of axes. Raises ``ValueError`` when the figure has no grid of axes or the margins leave no room for one.
    """
    grid = fig.axes[0].get_gridspec()
    if grid is None:
        raise ValueError("place: the figure's first axes are not on a grid")
    rows, columns = grid.get_geometry()
    width, height = fig.get_size_inches()
    inner_w = width - left - right - wspace * (columns - 1)
    inner_h = height - top - bottom - hspace * (rows - 1)
    if inner_w <= 0 or inner_h <= 0:
        raise ValueError(
            f"place: margins of {width - inner_w:.2f} × {height - inner_h:.2f} in leave no room for the axes"
        )
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wspace * columns / inner_w,
        hspace=hspace * rows / inner_h,
    )


def legend_width(handles: list[Line2D], points: float) -> float:
    """Inches of width a one-column legend of ``handles`` takes at a font size of ``points``: its longest label (about
    0.5 em a character) after the handle, the gaps and the frame (about 0.55 inch)."""
    return 0.55 + max((len(str(h.get_label())) for h in handles), default=0) * 0.5 * points / 72
