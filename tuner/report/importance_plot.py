"""``importance.png``: each optimizer's parameter importances with their bootstrap spread."""

from __future__ import annotations

from matplotlib.figure import Figure

from tuner.plural import counted
from tuner.report.data import Report
from tuner.report.drawing import colors, note, place, text_height, wrapped


def draw_importance(report: Report) -> Figure:
    """One panel per optimizer, side by side, the parameters in the same order (most important overall on top);
    each bar with its bootstrap sd, and a weak estimate (few complete trials) said so under the panel's title."""
    order, color = report.parameters, colors(report)
    fig = Figure(figsize=(3.4 * len(report.optimizers) + 1.5, 2.0 + 0.3 * max(len(order), 5)))
    axes = fig.subplots(1, len(report.optimizers), sharey=True, squeeze=False)[0]
    titles = []
    for ax, o in zip(axes, report.optimizers):
        imp = o.importance
        # (row, importance, sd) of each parameter this optimizer has: one barh call for them all (a call a bar made
        # an error-bar container each, a fifth of the figure's time).
        bars = [(y, imp.values[name], imp.sd.get(name, 0.0)) for y, name in enumerate(order) if name in imp.values]
        if bars:
            rows, widths, sds = zip(*bars)
            error = {"ecolor": "dimgrey", "capsize": 3, "linewidth": 1}
            ax.barh(rows, widths, xerr=sds, color=color[o.name], error_kw=error)
        for y, width, sd in bars:
            ax.text(width + sd + 0.02, y, f"{width:.2f} ± {sd:.2f}", va="center", fontsize=8)
        if imp.note and not imp.values:
            note(ax, imp.note)
        weak = f"\n{imp.note}" if imp.note and imp.values else ""
        titles.append(wrapped(f"{o.name} ({counted(imp.trials, 'complete trial')}){weak}", 3.2, 10))
        ax.set_title(titles[-1], color=color[o.name], fontsize=10)
        # Room right of the longest bar and its error bar for the label.
        ax.set_xlim(0, max([1.3] + [imp.values[n] + imp.sd.get(n, 0.0) + 0.45 for n in imp.values]))
        ax.set_xlabel("importance (sums to 1)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(order)), order)
    axes[0].set_ylim(max(len(order), 1) - 0.5, -0.5)  # the most important on top
    title = wrapped(
        f"Parameter importance ({report.importance})\n"
        "error bars: ± 1 sd over bootstrap resamples of the complete trials",
        fig.get_figwidth() - 0.3,
        11,
    )
    fig.suptitle(title, fontsize=11)
    fig.supxlabel(
        "1-x: x searched as 1 - x on a log scale; <schedule>.<param>: only in the trials of that schedule", fontsize=8
    )
    # Left: the parameter names at 10 points (about 0.08 inch a character); top: both titles; bottom: ticks, the
    # axis label and the figure's one-line note.
    place(
        fig,
        left=0.3 + 0.08 * max(map(len, order), default=4),
        top=0.2 + text_height(title, 11) + max(text_height(t, 10) for t in titles),
        bottom=0.75 + text_height("", 8),
        wspace=0.3,
    )
    return fig
