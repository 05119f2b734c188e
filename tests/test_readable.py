"""What a reader sees: numbers with the precision their spread allows, close calls said so, and figures whose marks
stay visible (no marker hidden under another optimizer's, no line leaving the axes, no panel without its tick labels,
log axes labelled between decades, importances with their uncertainty)."""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import os
import pathlib
import sys

import optuna
import pytest
from matplotlib.figure import Figure

from tuner.report.build import close_call, with_importances
from tuner.report.convergence_plot import draw_convergence
from tuner.report.data import Importance, OptimizerReport, Report, TrialPoint
from tuner.report.drawing import place, wrapped
from tuner.report.figures import FIGURES, FORKED, draw_all, drawing, save_figures
from tuner.report.importance import MIN_IMPORTANCE_TRIALS, MIN_WEAK_IMPORTANCE_TRIALS, importance, pending, sample
from tuner.report.importance_plot import draw_importance
from tuner.report.learning_curves_plot import draw_learning_curves
from tuner.report.log_axis import log_ticks
from tuner.report.sensitivity_plot import draw_sensitivity
from tuner.report.statistics import ExpectedBest, Summary, pm


@pytest.mark.parametrize(
    ("stat", "text"),
    [
        ((0.08073, 0.02), "0.081 ± 0.020"),
        ((0.08073, 0.0068), "0.0807 ± 0.0068"),
        ((0.9786, 0.0996), "0.98 ± 0.10"),
        ((56734.0, 1234.0), "56700 ± 1200"),
        ((0.2, 0.0), "0.2 ± 0"),
        ((math.nan, math.nan), "nan ± nan"),
        ((1e19, 3e18), "1e+19 ± 3e+18"),
    ],
)
def test_mean_and_sd_are_written_to_the_precision_of_the_sd(stat, text):
    assert pm(stat) == text


def summary(name: str, values: list[float]) -> Summary:
    return Summary(
        name, f"x/{name}", 0, values[0], {}, {"seeds": list(range(1, len(values) + 1)), "val_objective": values}
    )


def test_a_close_call_is_said_with_its_uncertainty_and_a_clear_lead_is_not():
    adam, rmsprop = summary("adam", [0.06, 0.08, 0.10]), summary("rmsprop", [0.07, 0.09, 0.105])
    note = close_call([adam, rmsprop], adam, "minimize")
    assert (
        note.startswith("close call: adam (0.080 ± 0.020) and rmsprop (0.088 ± 0.018)")
        and "standard error (0.015)" in note
    )
    far = summary("sgd", [0.50, 0.52, 0.51])
    assert close_call([adam, far], adam, "minimize") is None
    assert close_call([adam], adam, "minimize") is None


def point(outcome: str, value: float | None, lr: float = 1e-3, eps: float | None = None) -> TrialPoint:
    return TrialPoint(outcome, value, lr, eps)


def optimizer(
    name: str, points: list[TrialPoint], best_so_far: list[float], imp: Importance | None = None
) -> OptimizerReport:
    return OptimizerReport(
        name,
        Summary(name, f"x/{name}", None, None, {}, None),
        points,
        best_so_far,
        ExpectedBest([], [], []),
        math.nan,
        math.nan,
        None,
        None,
        None,
        imp or Importance({}, 0, "too few"),
        None,
    )


def report(*optimizers: OptimizerReport, untrained: float | None = 2.3) -> Report:
    setup = {
        "objective": "loss",
        "metric": "accuracy",
        "direction": "minimize",
        "epochs": 3,
        "task": "t",
        "task_args": {},
    }
    return Report("x", setup, None, False, untrained, "PED-ANOVA", ["lr", "eps"], list(optimizers), None, [])


def drawn(fig):
    fig.savefig(io.BytesIO(), format="png")  # lays the figure out, as the PNG is
    return fig


def test_convergence_keeps_every_marker_and_line_visible():
    # Both optimizers diverge at trial 2: their crosses sit in two rows at the edge, not one on the other.
    # sgd's best so far is worse than the untrained model (a loss of 1e19): its line runs along the edge.
    adam = optimizer("adam", [point("complete", 0.5), point("diverged", None), point("complete", 0.3)], [0.5, 0.5, 0.3])
    sgd = optimizer(
        "sgd", [point("complete", 1e19), point("diverged", None), point("complete", 0.4)], [1e19, 1e19, 0.4]
    )
    fig = drawn(draw_convergence(report(adam, sgd)))
    ax = fig.axes[0]
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 2 and crosses[0].get_ydata()[0] != crosses[1].get_ydata()[0]
    low, high = ax.get_ylim()
    steps = [line for line in ax.get_lines() if line.get_linewidth() == 2]
    assert len(steps) == 2
    for line in steps:
        assert all(low <= y <= high for y in line.get_ydata() if not math.isnan(y))
    # Every row of edge markers lies beyond every value drawn, the untrained model's line included (axes fraction).
    to_axes = ax.transLimits.transform
    lowest_row = min(line.get_ydata()[0] for line in crosses)
    for y in [0.5, 0.3, 0.4, 2.3]:
        assert to_axes((1, y))[1] < lowest_row - 0.01, (y, lowest_row)


def test_the_convergence_legend_starts_under_the_title():
    # "accuracy": the title runs past the axes into the right margin, where the legend is (a newcomer saw it cut).
    adam = optimizer("adam", [point("complete", 0.5), point("complete", 0.3)], [0.5, 0.3])
    base = report(adam)
    setup = {**base.setup, "objective": "metric", "metric": "top-1 accuracy", "direction": "maximize"}
    fig = drawn(draw_convergence(dataclasses.replace(base, setup=setup)))
    assert not fig.legends[0].get_window_extent().overlaps(fig.axes[0].title.get_window_extent())


def test_a_log_axis_is_labelled_between_its_decades():
    points = [point("complete", v) for v in (0.05, 0.08, 0.09, 0.3, 0.6)]
    fig = drawn(draw_convergence(report(optimizer("adam", points, [0.05] * 5), untrained=None)))
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    labels = {t.get_text() for t in ax.get_yticklabels() if t.get_visible() and t.get_text()}
    assert {"0.05", "0.1", "0.2", "0.3", "0.5"} <= labels, labels
    # 0.08 and 0.09 can be told apart: a grid line at each multiple of the decade that has no label.
    assert {0.08, 0.09} <= {round(y, 6) for y in ax.yaxis.get_minorticklocs()}


def label_boxes(ax, axis: str) -> list:
    """The window extents of the visible, non-empty tick labels of ``ax``'s ``axis``, in order along it."""
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    boxes = [t.get_window_extent() for t in labels if t.get_visible() and t.get_text()]
    return sorted(boxes, key=lambda box: box.x0 if axis == "x" else box.y0)


@pytest.mark.parametrize(
    ("rates", "values"),
    [
        (
            [1.5e-4, 2.2e-4, 3.1e-4, 4.4e-4, 6e-4, 5e-3],
            [0.3, 0.5, 0.4, 0.6, 0.35, 0.8],
        ),  # 1.5 decades: the quickstart's
        ([2e-4, 3e-4, 4e-4, 5e-4, 6e-4, 9e-4], [0.3, 0.5, 0.4, 0.6, 0.35, 0.8]),  # under a decade
        ([1e-5, 1e-3, 1.0], [0.3, 0.5, 40.0]),  # five decades
    ],
)
def test_log_axes_labels_keep_apart_and_one_lies_near_each_end(rates, values):
    adam = optimizer("adam", [point("complete", v, lr) for v, lr in zip(values, rates)], [min(values)] * len(values))
    fig = drawn(draw_sensitivity(report(adam, adam, adam, untrained=None)))
    for ax in fig.axes[:3]:
        boxes = label_boxes(ax, "x")
        assert len(boxes) >= 2
        assert all(a.x1 < b.x0 for a, b in itertools.pairwise(boxes)), [t.get_text() for t in ax.get_xticklabels()]
    ax = fig.axes[0]
    boxes = label_boxes(ax, "y")
    assert all(a.y1 < b.y0 for a, b in itertools.pairwise(boxes))
    # A label within a factor of 2.5 of the best value and of the worst: the axis can be read where it matters.
    ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    for value in (min(values), max(values)):
        assert any(value / 2.5 <= t <= value * 2.5 for t in ticks), (value, ticks)


def test_an_epsilon_panel_next_to_a_blank_one_keeps_its_tick_labels():
    sgd = optimizer("sgd", [point("complete", 0.5, 1e-2), point("complete", 0.4, 1e-1)], [0.5, 0.4])
    adam = optimizer("adam", [point("complete", 0.5, 1e-3, 1e-8), point("complete", 0.3, 1e-2, 1e-4)], [0.5, 0.3])
    fig = drawn(draw_sensitivity(report(sgd, adam)))
    eps_panel = next(ax for ax in fig.axes if ax.get_title() == "adam: learning rate × epsilon")
    assert [t.get_text() for t in eps_panel.get_yticklabels() if t.get_visible() and t.get_text()]


def test_importance_of_few_trials_is_shown_as_weak_with_its_bootstrap_sd():
    study = optuna.create_study()
    study.optimize(
        lambda t: (
            abs(math.log10(t.suggest_float("lr", 1e-4, 1.0, log=True)) + 2) + 0 * t.suggest_float("eps", 0.0, 1.0)
        ),
        n_trials=12,
    )
    weak = importance(study)
    assert MIN_WEAK_IMPORTANCE_TRIALS <= weak.trials < MIN_IMPORTANCE_TRIALS
    assert (
        set(weak.values) == set(weak.sd) == {"lr", "eps"}
        and "weak estimate" in weak.note
        and str(MIN_IMPORTANCE_TRIALS) in weak.note
    )
    assert (
        all(sd >= 0 for sd in weak.sd.values()) and importance(study) == weak
    )  # seeded resamples: the same figure every time
    none = importance(optuna.create_study())
    assert none.values == {} and str(MIN_WEAK_IMPORTANCE_TRIALS) in none.note
    fig = drawn(draw_importance(report(optimizer("adam", [], [], weak), optimizer("sgd", [], [], none))))
    assert "weak estimate" in fig.axes[0].get_title()
    assert any("±" in t.get_text() for t in fig.axes[0].texts)


def test_threads_caps_torchs_threads(tmp_path, monkeypatch, capsys):
    import torch
    import yaml

    from tuner.cli.main import main

    monkeypatch.chdir(tmp_path)
    config = {
        "format": 1,
        "optimizer": {"class": "torch.optim.SGD", "kwargs": {"lr": 0.1}},
        "schedule": {"name": "constant", "params": {}},
        "training": {
            "task": "quadratic-deep",
            "task_args": {},
            "epochs": 1,
            "batch_size": 64,
            "seed": 4,
            "objective": "loss",
        },
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    before = torch.get_num_threads()
    try:
        assert main(["train", "cfg.yaml", "--threads", "1", "--seeds", "2"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    captured = capsys.readouterr()
    assert "seed 4:" in captured.out and "seed 5:" in captured.out
    assert (
        "seed 4 reproduces the trial it was selected on" in captured.err
        and "--first-seed 5 for fresh seeds" in captured.err
    )
    assert main(["train", "cfg.yaml", "--first-seed", "5"]) == 0
    fresh = capsys.readouterr()
    assert "seed 5:" in fresh.out and "seed 4:" not in fresh.out and fresh.err == ""


def test_importance_labels_clear_their_error_bars_and_long_titles_wrap_inside_the_figure():
    imp = Importance(
        {"lr": 0.8, "eps": 0.2}, 12, "weak estimate: 12 complete trials, 20 advised", {"lr": 0.27, "eps": 0.05}
    )
    evaluator = (
        "PED-ANOVA: how far the top 25% of complete trials stray from all of them; conditional parameters included"
    )
    built = dataclasses.replace(
        report(optimizer("adam", [], [], imp), optimizer("a-long-optimizer-name", [], [], imp)), importance=evaluator
    )
    fig = drawn(draw_importance(built))
    for ax in fig.axes:
        (label,) = [t for t in ax.texts if t.get_text().startswith("0.80")]
        assert label.get_position()[0] > 0.8 + 0.27 and ax.get_xlim()[1] > label.get_position()[0] + 0.3
    # The figure is 8.3 inches wide: its title (one line of 104 characters unwrapped) comes in lines that fit.
    title = fig.get_suptitle()
    assert max(len(line) for line in title.splitlines()) <= 90 and "conditional parameters included" in title.replace(
        "\n", " "
    )


def test_a_figure_laid_out_by_hand_keeps_its_margins_and_refuses_margins_with_no_room():
    fig = Figure(figsize=(6, 4))
    fig.subplots(1, 2)
    place(fig, left=0.6, right=0.3, top=0.5, bottom=0.4, wspace=0.8)
    (left, right) = (ax.get_position() for ax in fig.axes)
    assert left.x0 * 6 == pytest.approx(0.6) and (1 - right.x1) * 6 == pytest.approx(0.3)
    assert (right.x0 - left.x1) * 6 == pytest.approx(0.8) and left.width == pytest.approx(right.width)
    assert (1 - left.y1) * 4 == pytest.approx(0.5) and left.y0 * 4 == pytest.approx(0.4)
    with pytest.raises(ValueError, match="no room"):
        place(fig, left=3, right=3)


def test_wrapped_breaks_long_lines_and_leaves_mathtext_whole():
    formula = r"$E[\min$ of $n] = \sum_{i=1}^{N} v_{(i)}$ " + "x " * 80
    text = wrapped("short\n" + "word " * 60 + "\n" + formula, 4.0, 8)
    lines = text.split("\n")
    assert (
        lines[0] == "short" and lines[-1] == formula and all(len(line) <= 60 for line in lines[1:-1]) and len(lines) > 4
    )


def test_a_log_axis_within_a_decade_is_labelled_in_plain_steps_and_over_many_at_every_other_decade():
    assert log_ticks(0.0054, 0.0056, 4.0, "y") == [
        0.0054,
        0.005425,
        0.00545,
        0.005475,
        0.0055,
        0.005525,
        0.00555,
        0.005575,
        0.0056,
    ]
    assert log_ticks(1e-12, 1.0, 2.0, "y") == [1e-12, 1e-10, 1e-08, 1e-06, 0.0001, 0.01, 1.0]


def test_the_learning_curves_title_wraps_inside_a_one_panel_figure():
    # The objective is the loss and the task's metric too (a regression): one panel, 5.5 inches wide.
    built = report(optimizer("adam", [], []))
    built = dataclasses.replace(built, setup={**built.setup, "metric": "loss"})
    fig = drawn(draw_learning_curves(built))
    title = fig.get_suptitle()
    assert len(fig.axes) == 1 and max(len(line) for line in title.splitlines()) * 0.6 * 11 / 72 <= fig.get_figwidth()


def test_the_figures_drawn_beside_a_forked_child_are_those_drawn_in_one_process(tmp_path):
    # On Linux with two cores or more, a child draws FORKED: every file is there, byte for byte as drawn here.
    adam = optimizer("adam", [point("complete", 0.5, eps=1e-8), point("diverged", None)], [0.5, 0.5])
    built = report(adam, optimizer("sgd", [point("pruned", 0.7, lr=0.1)], [math.nan]))
    (tmp_path / "both").mkdir()
    (tmp_path / "here").mkdir()
    paths = draw_all(built, tmp_path / "both")
    save_figures(built, tmp_path / "here", FIGURES)
    assert [p.name for p in paths] == [f"{name}.png" for name in FIGURES]
    for path in paths:
        assert path.read_bytes() == (tmp_path / "here" / path.name).read_bytes(), path.name


def children() -> set[int]:
    """This process's child processes, zombies included (Linux)."""
    return {
        int(pid)
        for task in pathlib.Path("/proc/self/task").iterdir()
        for pid in (task / "children").read_text().split()
    }


@pytest.mark.skipif(sys.platform != "linux", reason="the figures are drawn in one process elsewhere")
def test_figures_that_cannot_be_written_raise_oserror_and_leave_no_child(tmp_path):
    (tmp_path / "file").write_text("")
    before = children()
    with pytest.raises(OSError):
        draw_all(report(optimizer("adam", [point("complete", 0.5)], [0.5])), tmp_path / "file")
    assert children() == before  # the child was waited for


@pytest.mark.skipif(sys.platform != "linux", reason="the figures are drawn in one process elsewhere")
def test_a_block_that_fails_beside_the_figures_leaves_no_child_and_draws_nothing_more_here(tmp_path):
    before = children()
    with (
        pytest.raises(KeyboardInterrupt),
        drawing(report(optimizer("adam", [point("complete", 0.5)], [0.5])), tmp_path),
    ):
        raise KeyboardInterrupt  # Ctrl-C while the texts are written
    assert children() == before  # the child was waited for
    assert not any((tmp_path / f"{name}.png").exists() for name in FIGURES if name not in FORKED)


def test_importances_left_pending_are_computed_by_the_process_that_draws_importance_png(tmp_path):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: abs(math.log10(t.suggest_float("lr", 1e-4, 1.0, log=True)) + 2), n_trials=12)
    adam = optimizer("adam", [], [], pending(12))
    waiting = dataclasses.replace(report(adam), parameters=[])
    computed_in = tmp_path / "pid"

    def complete() -> Report:
        computed_in.write_text(str(os.getpid()))
        return with_importances(waiting, [sample(study)])

    (tmp_path / "pending").mkdir()
    (tmp_path / "whole").mkdir()
    draw_all(waiting, tmp_path / "pending", complete)
    whole = with_importances(waiting, [sample(study)])
    assert whole.optimizers[0].importance == importance(study) and whole.parameters == ["lr"]
    save_figures(whole, tmp_path / "whole", ["importance"])
    assert (tmp_path / "pending" / "importance.png").read_bytes() == (
        tmp_path / "whole" / "importance.png"
    ).read_bytes()
    if sys.platform == "linux" and len(os.sched_getaffinity(0)) > 1:  # by the child, beside this process's figures
        assert int(computed_in.read_text()) != os.getpid()
