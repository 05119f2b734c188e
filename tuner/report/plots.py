"""The report's figures, drawn with matplotlib from the plain data of :mod:`tuner.report.data`.

Figures are ``matplotlib.figure.Figure`` objects, without pyplot (no global
figure registry, no GUI backend), saved as PNG by matplotlib's Agg renderer.
Each optimizer has one colour, the same in every figure.

Trials are drawn by outcome: complete filled, pruned hollow (at the last value
they reported). Trials worse than the untrained model (a loss of 1e19 says no
more than one of 3) are drawn as triangles at the edge where bad values lie,
diverged and failed ones (no value) as crosses there, so that the axis shows
the values that matter.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatterSciNotation, MaxNLocator

from tuner.report import step_size_plot
from tuner.report.statistics import worth

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from tuner.report.data import Report, TrialPoint

DPI = 100
MARKERS = {"diverged": "x", "failed": "+"}  # trials without a value


def colors(report: Report) -> dict[str, str]:
    """One colour per optimizer (matplotlib's default cycle, in the report's order)."""
    return {o.name: f"C{i % 10}" for i, o in enumerate(report.optimizers)}


def _finite(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


class _PlainLog(LogFormatterSciNotation):
    """Log-axis labels as plain numbers (0.2, 1e-08), on the ticks matplotlib would label."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def _wide(values: list[float]) -> bool:
    """Positive values that span a decade or more."""
    return bool(values) and min(values) > 0 and max(values) >= 10 * min(values)


def _log_if_wide(ax: Axes, values: Iterable[float | None], axis: str = "y") -> None:
    """A log scale on ``axis`` when the values are positive and span a decade or more.

    Labelled between the decades too where they fit (every minor tick up to about a decade and a
    quarter, some of them up to two decades) and gridded at every minor tick up to three decades, so
    that 0.08 and 0.09 can be told apart on an axis labelled 0.1 and 1.
    """
    finite = _finite(values)
    if _wide(finite):
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        target = ax.yaxis if axis == "y" else ax.xaxis
        target.set_major_formatter(_PlainLog())
        target.set_minor_formatter(_PlainLog(labelOnlyBase=False, minor_thresholds=(2, 1.25)))
        if max(finite) <= 1000 * min(finite):  # over more decades, a line per minor tick would be a grey wash
            ax.grid(which="minor", axis=axis, alpha=0.12)


def _shown(report: Report, points: Iterable[TrialPoint]) -> list[float]:
    """The values drawn inside the axes: those no worse than the untrained model."""
    return [
        p.value for p in points if p.value is not None and worth(p.value, report.untrained, report.direction) == p.value
    ]


# Axes fraction between the rows of markers that several optimizers put at the bad edge of one panel.
EDGE_LANE = 0.035


def _trials(ax: Axes, report: Report, xs: list[float], points: list[TrialPoint], color: str, lane: int = 0) -> None:
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
        elif _at_edge(report, p):
            groups.setdefault((beyond, filled, True), []).append((x, edge))
        else:
            groups.setdefault(("o", filled, False), []).append((x, p.value))
    for (marker, filled, at_edge), xy in groups.items():
        where = {"transform": ax.get_xaxis_transform(), "clip_on": False} if at_edge else {"alpha": 0.8}
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


def _at_edge(report: Report, p: TrialPoint) -> bool:
    """Whether :func:`_trials` draws ``p`` at the bad edge: no value, or worse than the untrained model."""
    return p.value is None or worth(p.value, report.untrained, report.direction) != p.value


def _make_room(ax: Axes, direction: str, share: float) -> None:
    """Widen the y axis on its bad side (the top when minimizing) so that the outer ``share`` of its height holds no
    value drawn so far: the rows of edge markers then lie beyond every value, the untrained line included."""
    log = ax.get_yscale() == "log"
    low, high = (math.log10(v) for v in ax.get_ylim()) if log else ax.get_ylim()
    grown = (high - low) / (1 - share) - (high - low)
    low, high = (low, high + grown) if direction == "minimize" else (low - grown, high)
    ax.set_ylim(*((10**low, 10**high) if log else (low, high)))


def _trial_handles(report: Report) -> list[Line2D]:
    """Legend entries for :func:`_trials`, in grey."""
    edge = "top" if report.direction == "minimize" else "bottom"
    style = {"linestyle": "none", "color": "grey"}
    handles = [
        Line2D([], [], marker="o", label="complete", **style),
        Line2D([], [], marker="o", markerfacecolor="none", label="pruned (its last value)", **style),
        Line2D([], [], marker="x", label=f"diverged (no value: at the {edge})", **style),
        Line2D([], [], marker="+", label=f"failed (at the {edge})", **style),
    ]
    if report.untrained is not None:
        beyond = "^" if report.direction == "minimize" else "v"
        handles += [
            Line2D([], [], marker=beyond, label=f"worse than untrained (at the {edge})", **style),
            Line2D([], [], linestyle=":", color="grey", label=f"untrained model ({report.untrained:.4g})"),
        ]
    return handles


def _wrapped(text: str, inches: float, points: float) -> str:
    """``text`` with each line broken to fit ``inches`` of width at a font size of ``points`` (mathtext lines, with ``$``,
    are left whole: a break inside one would not render)."""
    width = max(20, int(inches * 120 / points))  # about 0.6 em a character: 72 / (0.6 * points) characters an inch
    return "\n".join(line if "$" in line else textwrap.fill(line, width) for line in text.split("\n"))


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="dimgrey")


def draw_importance(report: Report) -> Figure:
    """One panel per optimizer, side by side, the parameters in the same order (most important overall on top);
    each bar with its bootstrap sd, and a weak estimate (few complete trials) said so under the panel's title."""
    order, color = report.parameters, colors(report)
    fig = Figure(figsize=(3.4 * len(report.optimizers) + 1.5, 2.0 + 0.3 * max(len(order), 5)), layout="constrained")
    axes = fig.subplots(1, len(report.optimizers), sharey=True, squeeze=False)[0]
    for ax, o in zip(axes, report.optimizers):
        imp = o.importance
        for y, name in enumerate(order):
            if name in imp.values:
                width, sd = imp.values[name], imp.sd.get(name, 0.0)
                ax.barh(
                    y, width, xerr=sd, color=color[o.name], error_kw={"ecolor": "dimgrey", "capsize": 3, "linewidth": 1}
                )
                ax.text(width + sd + 0.02, y, f"{width:.2f} ± {sd:.2f}", va="center", fontsize=8)
        if imp.note and not imp.values:
            _note(ax, imp.note)
        weak = f"\n{imp.note}" if imp.note and imp.values else ""
        ax.set_title(
            _wrapped(f"{o.name} ({imp.trials} complete trials){weak}", 3.2, 10), color=color[o.name], fontsize=10
        )
        # Room right of the longest bar and its error bar for the label.
        ax.set_xlim(0, max([1.3] + [imp.values[n] + imp.sd.get(n, 0.0) + 0.45 for n in imp.values]))
        ax.set_xlabel("importance (sums to 1)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(order)), order)
    axes[0].set_ylim(max(len(order), 1) - 0.5, -0.5)  # the most important on top
    fig.suptitle(
        _wrapped(
            f"Parameter importance ({report.importance})\nerror bars: ± 1 sd over bootstrap resamples of the complete trials",
            fig.get_figwidth() - 0.3,
            11,
        ),
        fontsize=11,
    )
    fig.supxlabel(
        "1-x: x searched as 1 - x on a log scale; <schedule>.<param>: only in the trials of that schedule", fontsize=8
    )
    return fig


def draw_convergence(report: Report) -> Figure:
    """Best-so-far objective against trials, one line per optimizer, every trial marked by outcome."""
    fig = Figure(figsize=(10, 5.5), layout="constrained")
    ax = fig.subplots()
    color = colors(report)
    for lane, o in enumerate(report.optimizers):
        _trials(ax, report, list(range(1, len(o.points) + 1)), o.points, color[o.name], lane)
    _log_if_wide(ax, [v for o in report.optimizers for v in _shown(report, o.points)] + [report.untrained])
    at_edge = [lane for lane, o in enumerate(report.optimizers) if any(_at_edge(report, p) for p in o.points)]
    if at_edge:
        _make_room(ax, report.direction, 0.04 + EDGE_LANE * max(at_edge))
    low, high = ax.get_ylim()
    for o in report.optimizers:
        # A best so far worse than every value shown (worse than the untrained model) runs along the bad edge, inside the axes.
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
    fig.legend(handles=lines + _trial_handles(report), loc="outside right upper", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def draw_learning_curves(report: Report) -> Figure:
    """Validation loss (and metric) against epoch of each best config: mean and ± 1 sd over the final seeds."""
    metric = report.setup["metric"]
    panels = ["loss"] + ([metric] if metric != "loss" else [])
    fig = Figure(figsize=(5.5 * len(panels), 4.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    color = colors(report)
    for ax, name in zip(axes, panels):
        drawn: list[float] = []
        for o in report.optimizers:
            band = o.loss if name == "loss" else o.metric
            if band is None:
                continue
            ax.plot(band.epochs, band.mean, color=color[o.name], linewidth=2, label=o.name)
            low = [m - s for m, s in zip(band.mean, band.sd)]
            high = [m + s for m, s in zip(band.mean, band.sd)]
            ax.fill_between(band.epochs, low, high, color=color[o.name], alpha=0.2, linewidth=0)
            drawn += band.mean
        if name == report.label and report.target is not None and drawn:
            ax.axhline(
                report.target, color="grey", linestyle="--", linewidth=1, label=f"speed target {report.target:.4g}"
            )
        if not drawn:
            _note(ax, "no complete trial: no best config")
        _log_if_wide(ax, drawn)
        objective = " (the objective)" if name == report.label else ""
        ax.set(title=f"validation {name}{objective}", xlabel="epoch", ylabel=f"validation {name}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
    seeds = next((o.summary.final["seeds"] for o in report.optimizers if o.summary.final), [])
    missing = [o.name for o in report.optimizers if o.loss is None]
    title = f"Training convergence of each optimizer's best config: mean ± sd over seeds {', '.join(map(str, seeds)) or '-'}"
    fig.suptitle(title + (f"\nno complete trial, no curve: {', '.join(missing)}" if missing else ""), fontsize=11)
    return fig


def draw_budget(report: Report) -> Figure:
    """Expected best objective against the number of trials (Dodge et al. 2019), ± 1 sd, per optimizer."""
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    color = colors(report)
    means: list[float] = []
    for o in report.optimizers:
        e = o.expected
        worths = _finite(worth(p.value, report.untrained, report.direction) for p in o.points)
        if not e.n:
            continue
        ax.plot(e.n, e.mean, color=color[o.name], linewidth=2, label=f"{o.name} (CPE on validation {o.cpe:.4g})")
        # The band is clipped to the values drawn from: the best of n cannot lie outside them.
        low = [max(m - s, min(worths)) for m, s in zip(e.mean, e.sd)]
        high = [min(m + s, max(worths)) for m, s in zip(e.mean, e.sd)]
        ax.fill_between(e.n, low, high, color=color[o.name], alpha=0.2, linewidth=0)
        means += e.mean
    if report.untrained is not None and means:
        ax.axhline(
            report.untrained,
            color="grey",
            linestyle=":",
            linewidth=1,
            label=f"untrained model ({report.untrained:.4g})",
        )
    if not means:
        _note(ax, "no trial with a value")
    _log_if_wide(ax, [n for o in report.optimizers for n in o.expected.n], "x")
    _log_if_wide(ax, means)
    if ax.get_xscale() == "linear":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    best = "min" if report.direction == "minimize" else "max"
    floor = (
        ""
        if report.untrained is None
        else "; never worse than the untrained model's, which diverged and failed trials count as"
    )
    fig.suptitle(
        f"Expected best validation {report.label} after n trials: which optimizer is easier to tune", fontsize=11
    )
    ax.set_title(
        rf"$E[\{best}$ of $n] = \sum_{{i=1}}^{{N}} v_{{(i)}}\,[(i/N)^n - ((i-1)/N)^n]$ (Dodge et al. 2019); band: ± 1 sd"
        f"\n$v_{{(1)}}..v_{{(N)}}$: the N trials' values sorted worst to best; a trial's value: its validation {report.label}"
        + _wrapped(
            f"\n(pruned: the last it reported){floor}\nthe estimator assumes random-search trials; these are {report.sampling}",
            fig.get_figwidth() - 0.5,
            8,
        ),
        fontsize=8,
    )
    ax.set(xlabel="n: number of trials (the tuning budget)", ylabel=f"expected best validation {report.label}")
    ax.grid(alpha=0.3)
    if means:
        ax.legend(fontsize=8)
    return fig


def draw_sensitivity(report: Report) -> Figure:
    """Objective against learning rate for every trial; below, learning rate × epsilon coloured by objective, for optimizers with an epsilon."""
    optimizers, color = report.optimizers, colors(report)
    with_eps = any(p.eps is not None for o in optimizers for p in o.points)
    rows = 2 if with_eps else 1
    fig = Figure(figsize=(3.8 * len(optimizers) + 1.5, 3.6 * rows + 1.0), layout="constrained")
    # The learning-rate row shares its y axis; each epsilon panel keeps its own, with its tick labels
    # (a shared axis would drop them on a panel next to a blank one).
    axes = fig.subplots(rows, len(optimizers), squeeze=False)
    for ax in axes[0][1:]:
        ax.sharey(axes[0][0])
        ax.tick_params(which="both", labelleft=False)
    shown = [v for o in optimizers for v in _shown(report, o.points)]
    for ax, o in zip(axes[0], optimizers):
        points = [p for p in o.points if p.lr is not None]
        _trials(ax, report, [p.lr for p in points], points, color[o.name])
        _log_if_wide(ax, [p.lr for p in points], "x")
        ax.set(title=o.name, xlabel="learning rate")
        ax.title.set_color(color[o.name])
        ax.grid(alpha=0.3)
        if not points:
            _note(ax, "no trial")
    _log_if_wide(axes[0][0], [*shown, report.untrained])
    axes[0][0].set_ylabel(f"validation {report.label}")
    fig.legend(handles=_trial_handles(report), loc="outside lower center", ncols=3, fontsize=8)
    if with_eps:
        _epsilon_planes(fig, axes[1], report)
    fig.suptitle(
        f"Sensitivity: validation {report.label} of every trial against its learning rate"
        + (" (and epsilon, below)" if with_eps else ""),
        fontsize=11,
    )
    return fig


def _epsilon_planes(fig: Figure, axes: list[Axes], report: Report) -> None:
    """Learning rate × epsilon per optimizer, coloured by what each trial is worth (one colour scale)."""
    worths = _finite(worth(p.value, report.untrained, report.direction) for o in report.optimizers for p in o.points)
    norm = (LogNorm if _wide(worths) else Normalize)(min(worths, default=0), max(worths, default=1))
    cmap = "viridis_r" if report.direction == "minimize" else "viridis"
    for ax, o in zip(axes, report.optimizers):
        points = [p for p in o.points if p.lr is not None and p.eps is not None]
        if not points:
            ax.axis("off")
            _note(ax, f"{o.name}: no epsilon")
            continue
        valued = [p for p in points if p.value is not None]
        values = [worth(p.value, report.untrained, report.direction) for p in valued]
        ax.scatter([p.lr for p in valued], [p.eps for p in valued], c=values, cmap=cmap, norm=norm, s=24)
        missing = [p for p in points if p.value is None]
        if missing:
            ax.plot(
                [p.lr for p in missing],
                [p.eps for p in missing],
                linestyle="none",
                marker="x",
                color="red",
                label="diverged or failed",
            )
            ax.legend(fontsize=7)
        _log_if_wide(ax, [p.lr for p in points], "x")
        _log_if_wide(ax, [p.eps for p in points])
        ax.set(title=f"{o.name}: learning rate × epsilon", xlabel="learning rate", ylabel="epsilon")
        ax.grid(alpha=0.3)
    floor = "" if report.untrained is None else ", capped at the untrained model's"
    bar = fig.colorbar(
        ScalarMappable(norm=norm, cmap=cmap),
        ax=list(axes),
        label=f"validation {report.label}{floor} (brighter is better)",
    )
    if isinstance(norm, LogNorm):
        bar.ax.yaxis.set_major_formatter(_PlainLog())
        bar.ax.yaxis.set_minor_formatter(_PlainLog(labelOnlyBase=False))


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
        step_size_plot.draw_step_sizes,
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
