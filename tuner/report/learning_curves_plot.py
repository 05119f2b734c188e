"""``learning_curves.png``: training convergence of each best config, mean ± sd over the final seeds."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tuner.report.data import Report
from tuner.report.drawing import colors, log_if_wide, note, place, text_height, wrapped


def draw_learning_curves(report: Report) -> Figure:
    """Validation loss (and metric) against epoch of each best config: mean and ± 1 sd over the final seeds."""
    metric = report.setup["metric"]
    panels = ["loss"] + ([metric] if metric != "loss" else [])
    fig = Figure(figsize=(5.5 * len(panels), 4.8))
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
            note(ax, "no complete trial: no best config")
        log_if_wide(ax, drawn)
        objective = " (the objective)" if name == report.label else ""
        ax.set(title=f"validation {name}{objective}", xlabel="epoch", ylabel=f"validation {name}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
    seeds = report.final_seeds
    missing = [o.name for o in report.optimizers if o.loss is None]
    over = (
        f"seed {seeds[0]} (one seed: no band)"
        if len(seeds) == 1
        else f"mean ± sd over seeds {', '.join(map(str, seeds)) or '-'}"
    )
    title = f"Training convergence of each optimizer's best config: {over}"
    title += f"\nno complete trial, no curve: {', '.join(missing)}" if missing else ""
    title = wrapped(title, fig.get_figwidth() - 0.3, 11)  # one panel (the objective is the metric) is narrow
    fig.suptitle(title, fontsize=11)
    # Top: the figure's title, then each panel's one-line title (12 points); between the panels: the second's y labels.
    place(fig, top=0.35 + text_height(title, 11) + text_height("", 12), wspace=0.9)
    return fig
