"""``budget.png``: the expected best objective against the number of trials (Dodge et al. 2019)."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tuner.report.data import Report
from tuner.report.drawing import colors, finite, log_if_wide, note, place, text_height, wrapped
from tuner.report.statistics import worth


def draw_budget(report: Report) -> Figure:
    """Expected best objective against the number of trials (Dodge et al. 2019), ± 1 sd, per optimizer."""
    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    color = colors(report)
    means: list[float] = []
    for o in report.optimizers:
        e = o.expected
        worths = finite(worth(p.value, report.untrained, report.direction) for p in o.points)
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
        note(ax, "no trial with a value")
    log_if_wide(ax, [n for o in report.optimizers for n in o.expected.n], "x")
    log_if_wide(ax, means)
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
    formula = rf"$E[\{best}$ of $n] = \sum_{{i=1}}^{{N}} v_{{(i)}}\,[(i/N)^n - ((i-1)/N)^n]$"
    values = (
        f"$v_{{(1)}}..v_{{(N)}}$: the N trials' values sorted worst to best; "
        f"a trial's value: its validation {report.label}"
    )
    caveats = (
        f"\n(pruned: the last it reported){floor}\n"
        f"the estimator assumes random-search trials; these are {report.sampling}"
    )
    title = f"{formula} (Dodge et al. 2019); band: ± 1 sd\n{values}" + wrapped(caveats, fig.get_figwidth() - 0.5, 8)
    ax.set_title(title, fontsize=8)
    ax.set(xlabel="n: number of trials (the tuning budget)", ylabel=f"expected best validation {report.label}")
    ax.grid(alpha=0.3)
    if means:
        ax.legend(fontsize=8)
    # Top: the figure's title, then the axes' title at 8 points (its two mathtext lines are taller than plain ones).
    place(fig, top=0.45 + text_height("", 11) + text_height(title, 8) + 0.1)
    return fig
