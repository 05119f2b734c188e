"""Summaries, the winner and the table: plain data in, plain data out."""

from __future__ import annotations

import math

from tuner.analysis import Summary, mean_sd, table, winner

COUNTS = {"complete": 3, "pruned": 1, "diverged": 0, "failed": 0, "interrupted": 0, "running": 0}


def summary(name: str, best: float, finals: list[float] | None) -> Summary:
    final = None if finals is None else {"seeds": list(range(1, len(finals) + 1)), "val_objective": finals, "test_objective": finals}
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


def test_the_table_marks_the_winner_and_shows_nan_finals():
    adam, broken = summary("adam", 0.1, [0.2, 0.2]), summary("rmsprop", 0.01, [0.01, math.nan])
    text = table([adam, broken], "loss", adam)
    lines = text.splitlines()
    assert lines[0].startswith("optimizer") and lines[2].startswith("adam *")
    assert "0.2 ± 0" in lines[2] and "nan ± nan" in lines[3] and "3/1/0/0" in lines[3]
