"""Log axes labelled as densely as their labels fit: at 1, 2, 3, 5 ... times each decade on a long axis spanning few
decades, at every other decade on a short one spanning many, and in plain steps (0.0054, 0.0055) on one spanning less
than a decade, so that a value near either end of the axis has a label near it.

The ticks are chosen when the figure is drawn, from the axis's view and its length in inches (:func:`log_ticks`
computes them; :class:`LabelledLog` asks it), instead of matplotlib's choice by decades alone, which labels
0.0002 ... 0.0006 side by side on a narrow axis of one and a half decades and nothing near a value on an axis of
less than one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from matplotlib import rcParams
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import Formatter, LogLocator, MaxNLocator, NullFormatter

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# The multiples of each decade that are labelled, from the densest labelling to the sparsest.
MANTISSAS = ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 5), (1, 2, 5), (1, 3), (1,))


def label(value: float) -> str:
    """A tick's label: the number as people write it (0.0002, 1e-05, 30)."""
    return f"{value:g}"


def _extent(text: str, axis: Literal["x", "y"], points: float) -> float:
    """Inches a tick label takes along its axis at a font size of ``points`` with the gap it wants from the next one:
    about 0.6 em a character and an em across; two ems up (a label every line would be a column of numbers that the
    eye cannot follow, and each tick costs drawing time)."""
    em = points / 72
    return len(text) * 0.6 * em + em if axis == "x" else 2 * em


def _fits(ticks: list[float], low: float, high: float, inches: float, axis: Literal["x", "y"], points: float) -> bool:
    """Whether the labels of ``ticks`` (inside ``low``..``high``, sorted) keep apart on ``inches`` of axis."""
    scale = inches / (math.log10(high) - math.log10(low))
    at = [math.log10(t) * scale for t in ticks]
    room = [_extent(label(t), axis, points) / 2 for t in ticks]
    return all(b - a >= r + s for a, b, r, s in zip(at, at[1:], room, room[1:]))


def log_ticks(low: float, high: float, inches: float, axis: Literal["x", "y"] = "y", points: float = 10) -> list[float]:
    """The labelled ticks of a log axis that shows ``low``..``high`` (positive) over ``inches``, its labels at a font
    size of ``points``: the densest of :data:`MANTISSAS` whose labels keep apart, with at least two ticks in view;
    every k-th decade where even the decades are too dense; plain steps where fewer than two multiples of a decade
    lie in view."""
    low, high = min(low, high), max(low, high)
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for mantissas in MANTISSAS:
        ticks = [
            float(f"{m}e{e}") for e in range(first, last + 1) for m in mantissas
        ]  # 3e-05, not 3.0000000000000004e-05
        ticks = [t for t in ticks if low <= t <= high]
        if len(ticks) < 2:
            break
        if _fits(ticks, low, high, inches, axis, points):
            return ticks
    else:
        decades = [t for t in (float(f"1e{e}") for e in range(first, last + 1)) if low <= t <= high]
        for every in range(2, len(decades)):
            if _fits(decades[::every], low, high, inches, axis, points):
                return decades[::every]
        return decades[:1]
    # Under two ticks even at every multiple of a decade: plain steps, as many as keep apart.
    steps: list[float] = []
    for bins in range(8, 1, -1):
        steps = [
            float(t) for t in MaxNLocator(bins, steps=[1, 2, 2.5, 5, 10]).tick_values(low, high) if low <= t <= high
        ]
        if _fits(steps, low, high, inches, axis, points):
            break
    return [float(f"{t:.12g}") for t in steps]  # 0.005475, not 0.005475000000000001


class LabelledLog(LogLocator):
    """The major (labelled) ticks of a log axis: :func:`log_ticks` for the axis's view and length when it is drawn."""

    def __init__(self, ax: Axes, axis: Literal["x", "y"]) -> None:
        super().__init__()
        self.ax, self.which = ax, axis

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        if not 0 < min(vmin, vmax) < max(vmin, vmax) < math.inf:
            return list(super().tick_values(vmin, vmax))
        box = self.ax.get_window_extent()
        inches = (box.width if self.which == "x" else box.height) / self.ax.figure.dpi
        size = rcParams["xtick.labelsize" if self.which == "x" else "ytick.labelsize"]
        return log_ticks(vmin, vmax, inches, self.which, FontProperties(size=size).get_size_in_points())


class Plain(Formatter):
    """Tick labels as :func:`label` writes them."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return label(x)


class GridLog(LogLocator):
    """The minor (unlabelled, gridded) ticks of a log axis: every multiple of a decade, on an axis that shows up to
    three decades; none over more (a line per multiple would be a grey wash, and slow to draw)."""

    def __init__(self) -> None:
        super().__init__(subs=tuple(range(2, 10)))

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        low, high = sorted((vmin, vmax))
        return list(super().tick_values(vmin, vmax)) if low > 0 and high <= 1000 * low else []


def log_axis(ax: Axes, axis: Literal["x", "y"] = "y") -> None:
    """``ax``'s ``axis`` on a log scale, labelled by :class:`LabelledLog` and gridded by :class:`GridLog`."""
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LabelledLog(ax, axis))
    target.set_major_formatter(Plain())
    target.set_minor_locator(GridLog())
    target.set_minor_formatter(NullFormatter())
    ax.grid(which="minor", axis=axis, alpha=0.12)
