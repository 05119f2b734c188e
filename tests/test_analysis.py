"""Summaries, the winner, the table and the report's statistics: plain data in, plain data out."""

from __future__ import annotations

import math

import pytest

from tuner.report.statistics import (
    ExpectedBest,
    Speed,
    Summary,
    band,
    cpe,
    default_target,
    epochs_to_target,
    expected_best,
    mean_sd,
    table,
    winner,
    worth,
)

COUNTS = {"complete": 3, "pruned": 1, "diverged": 0, "failed": 0, "interrupted": 0, "running": 0}


def summary(name: str, best: float, finals: list[float] | None) -> Summary:
    final = (
        None
        if finals is None
        else {"seeds": list(range(1, len(finals) + 1)), "val_objective": finals, "test_objective": finals}
    )
    return Summary(name, f"x/{name}", 0, best, COUNTS, final)


def test_mean_sd_is_nan_when_a_value_is_not_finite():
    assert mean_sd([1.0, 3.0]) == (2.0, math.sqrt(2.0))
    assert mean_sd([2.0]) == (2.0, 0.0)
    assert all(math.isnan(v) for v in mean_sd([1.0, math.nan]) + mean_sd([math.inf]) + mean_sd([]))


def test_the_winner_follows_the_direction_and_ranks_diverged_finals_last():
    adam, sgd = summary("adam", 0.10, [0.20, 0.22]), summary("sgd", 0.12, [0.15, 0.17])
    assert winner([adam, sgd], "minimize") is sgd
    assert winner([adam, sgd], "maximize") is adam
    broken = summary("rmsprop", 0.01, [0.01, math.nan])
    assert winner([broken, adam], "minimize") is adam
    assert winner([broken], "minimize") is broken
    assert winner([summary("none", 0.1, None)], "minimize") is None


def test_the_table_lines_up_its_columns_as_markdown():
    text = table([["optimizer", "final val"], ["adam *", "0.2 ± 0"], ["rmsprop", "nan ± nan"]])
    assert text.splitlines() == [
        "| optimizer | final val |",
        "| --------- | --------- |",
        "| adam *    | 0.2 ± 0   |",
        "| rmsprop   | nan ± nan |",
    ]


def test_expected_best_matches_the_hand_computed_dodge_curve():
    # Values 1, 2, 3 sorted worst to best when maximizing: E[max of n] = sum_i v(i) [(i/3)^n - ((i-1)/3)^n].
    up = expected_best([3.0, 1.0, 2.0], 3, "maximize")
    assert up.n == [1, 2, 3]
    assert up.mean == pytest.approx([2.0, 22 / 9, 72 / 27])  # n=2: (1*1 + 2*3 + 3*5)/9; n=3: (1*1 + 2*7 + 3*19)/27
    assert up.sd == pytest.approx(
        [(2 / 3) ** 0.5, 38**0.5 / 9, (8 / 27) ** 0.5]
    )  # sd from E[max^2]: n=2 58/9, n=3 200/27)
    # Minimizing mirrors it: the best is the smallest, sorted 3, 2, 1.
    down = expected_best([1.0, 2.0, 3.0], 3, "minimize")
    assert down.mean == pytest.approx([2.0, 14 / 9, 4 / 3])
    assert down.sd == pytest.approx(up.sd)
    # With one value every budget gets it; no values give no curve.
    assert expected_best([0.5], 2, "minimize") == ExpectedBest([1, 2], [0.5, 0.5], [0.0, 0.0])
    assert expected_best([], 5, "minimize") == ExpectedBest([], [], [])


def test_a_trial_is_worth_no_less_than_the_untrained_model():
    assert [worth(v, 2.3, "minimize") for v in (0.1, 2.3, 1e19, None)] == [0.1, 2.3, 2.3, 2.3]
    assert [worth(v, 0.1, "maximize") for v in (0.9, 0.05, None)] == [0.9, 0.1, 0.1]
    assert [worth(v, None, "minimize") for v in (1e19, None)] == [1e19, None]


def test_cpe_weights_small_budgets_linearly_more():
    assert cpe(ExpectedBest([1, 2, 3], [3.0, 2.0, 1.0], [0.0] * 3)) == pytest.approx((3 * 3 + 2 * 2 + 1 * 1) / 6)
    assert cpe(ExpectedBest([1], [0.4], [0.0])) == 0.4
    assert math.isnan(cpe(ExpectedBest([], [], [])))


def test_epochs_to_target_on_a_synthetic_history():
    losses = [[0.5, 0.3, 0.2], [0.6, 0.4, 0.25], [0.9, 0.8, 0.7]]
    speed = epochs_to_target(losses, 0.3, "minimize", epochs=3)
    assert (speed.epochs, speed.reached, speed.runs) == (3.0, 2, 3)  # epochs 2 and 3; never counts as 3 + 1
    accuracies = [[0.5, 0.8, 0.9], [0.91, 0.7]]  # the second run diverged after epoch 2
    assert epochs_to_target(accuracies, 0.9, "maximize", epochs=3) == Speed(2.0, 2, 2)


def test_the_default_target_is_the_least_good_final_mean():
    adam, sgd = summary("adam", 0.1, [0.2, 0.2]), summary("sgd", 0.1, [0.3, 0.3])
    assert default_target([adam, sgd, summary("none", 0.1, None)], "minimize") == pytest.approx(0.3)
    assert default_target([adam, sgd], "maximize") == pytest.approx(0.2)
    assert default_target([summary("none", 0.1, None), summary("nan", 0.1, [math.nan])], "minimize") is None


def test_band_is_the_mean_and_sd_over_the_runs_that_reached_each_epoch():
    curves = band([[1.0, 2.0, 3.0], [3.0, 4.0], [5.0, math.nan]])
    assert curves.epochs == [1, 2, 3]
    assert curves.mean == pytest.approx([3.0, 3.0, 3.0])
    assert curves.sd == pytest.approx([2.0, 2**0.5, 0.0])
    assert math.isnan(band([[math.nan]]).mean[0]) and band([]).epochs == []
