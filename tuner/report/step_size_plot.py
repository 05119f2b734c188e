"""``step_sizes.png``: each optimizer's effective per-parameter learning rate over training
(see :mod:`tuner.measure.step_sizes`).

One panel per optimizer, one shared log y axis: for its largest parameter tensors, the median (line) and 5-95%
band of ``η`` against the optimizer step, from the first final seed's record; the optimizer's own scheduled
learning rate dotted, and the SGD best config's schedule dashed in every panel (the reference: SGD's ``η``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from tuner.measure.step_sizes import largest
from tuner.report.drawing import note, place, text_height, wrapped
from tuner.report.log_axis import log_axis

if TYPE_CHECKING:
    from tuner.report.data import Report

# Tensors drawn per optimizer, the largest: more bands would hide each other.
TENSORS = 4


def draw_step_sizes(report: Report) -> Figure:
    """The figure; a panel says why when its optimizer has no record (no final evaluation, or one stored before)."""
    records = {o.name: o.step_sizes for o in report.optimizers}
    sgd = next((r for r in records.values() if r and r["optimizer"] == "SGD"), None)
    fig = Figure(figsize=(4.6 * len(records) + 1, 5.2))
    axes = fig.subplots(1, len(records), sharey=True, squeeze=False)[0]
    for ax, (name, record) in zip(axes, records.items()):
        ax.set(title=name if not record else f"{name} ({record['optimizer']})", xlabel="optimizer step")
        if not record or not record["defined"]:
            note(ax, "no step sizes recorded" if not record else f"η is not defined\nfor {record['optimizer']}")
            continue
        for i, series in enumerate(largest(record, TENSORS)):
            color = f"C{i}"
            ax.plot(
                series.steps, series.median, color=color, linewidth=1.8, label=f"{series.tensor} ({series.numel:,})"
            )
            ax.fill_between(series.steps, series.low, series.high, color=color, alpha=0.18, linewidth=0)
        ax.plot(record["steps"], record["lr"], color="grey", linestyle=":", linewidth=1.5, label="its scheduled lr")
        if sgd is not None:
            ax.plot(
                sgd["steps"],
                sgd["lr"],
                color="black",
                linestyle="--",
                linewidth=1.2,
                label="SGD's scheduled lr (= SGD's η)",
            )
        log_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0].set_ylabel("effective learning rate η (log)")
    seed = report.final_seeds[0] if report.final_seeds else "-"
    title = wrapped(
        f"Effective per-parameter learning rate η of each best config (seed {seed}): "
        "median and 5-95% band over each tensor's elements,\n"
        f"its {TENSORS} largest tensors (parameter count in brackets); SGD's η is its scheduled lr for every parameter",
        fig.get_figwidth() - 0.3,
        10,
    )
    fig.suptitle(title, fontsize=10)
    place(fig, top=0.3 + text_height(title, 10) + text_height("", 12), wspace=0.3)
    return fig
