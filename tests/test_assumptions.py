"""What the statistics assume: the expected-best curve's random-search trials, and CPE on the test value of the config picked on validation."""

from __future__ import annotations

import itertools
import statistics

import optuna
import pytest

from tuner.cli.main import main
from tuner.measure.untrained import untrained_objective
from tuner.report.statistics import cpe, expected_best, expected_picked, worth
from tuner.tasks.loading import load_task


def brute_force_picked(pairs: list[tuple[float, float]], n: int) -> float:
    """The mean over every ordered draw of n trials with replacement of the test value of the draw's lowest validation value."""
    return statistics.fmean(min(draw, key=lambda pair: pair[0])[1] for draw in itertools.product(pairs, repeat=n))


def test_the_picked_config_is_scored_by_its_test_value_not_by_the_best_test_value():
    pairs = [(0.3, 0.9), (0.1, 0.5), (0.2, 0.1), (0.4, 0.7)]  # the best on validation is not the best on test
    curve = expected_picked(pairs, 3, "minimize")
    for n, mean in zip(curve.n, curve.mean):
        assert mean == pytest.approx(brute_force_picked(pairs, n))
    assert curve.mean[-1] > expected_best([t for _, t in pairs], 3, "minimize").mean[-1]
    # When validation and test agree, it is the expected best of the test values.
    agreeing = [(v, 10 * v) for v, _ in pairs]
    assert expected_picked(agreeing, 4, "maximize").mean == pytest.approx(
        expected_best([t for _, t in agreeing], 4, "maximize").mean
    )
    assert cpe(expected_picked([], 0, "minimize")) != cpe(expected_picked([], 0, "minimize"))  # NaN: no complete trial


@pytest.mark.parametrize(
    ("sampler", "population", "said"),
    [
        ("random", 1, "these are random-search trials, as the estimator assumes"),
        (
            "tpe",
            2,
            "these are tpe trials, not independent draws: optimistic",
        ),  # batched trials record their test value too
    ],
)
def test_the_report_says_which_sampler_drew_the_trials_and_scores_cpe_on_test(
    workdir, capsys, sampler, population, said
):
    exp = workdir / "exp.yaml"
    exp.write_text(
        f"name: s\ntask: digits-mlp\ntask_args: {{hidden: 16}}\noptimizers: [sgd]\nschedules: [constant]\ntrials: 3\n"
        f"epochs: 1\nseed: 0\nsampler: {sampler}\npruner: none\nobjective: loss\nfinal_seeds: 1\npopulation: {population}\n"
    )
    args = [
        "study",
        str(exp),
        "--storage",
        f"sqlite:///{workdir}/t.db",
        "--out",
        str(workdir / "out"),
        "--no-progress",
        "--no-tracking",
    ]
    assert main(args) == 0
    trials = optuna.load_study(study_name="s/sgd", storage=f"sqlite:///{workdir}/t.db").trials
    assert {t.user_attrs["sampler"] for t in trials} == {sampler}
    complete = [t for t in trials if t.user_attrs["outcome"] == "complete"]
    assert complete and all(t.user_attrs["test_objective"] > 0 for t in complete)
    summary = (workdir / "out" / "summary.md").read_text()
    assert said in summary
    row = next(line for line in summary.splitlines() if line.startswith("| sgd"))
    header = next(line for line in summary.splitlines() if line.startswith("| optimizer"))
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))
    task = load_task("digits-mlp", {"hidden": 16})
    floor = untrained_objective(
        task, task.data(), 0, "loss", "test"
    )  # a test value is never worse than the untrained model's
    pairs = [(t.value, worth(t.user_attrs["test_objective"], floor, "minimize")) for t in complete]
    assert float(cells["CPE (test)"]) == pytest.approx(cpe(expected_picked(pairs, len(complete), "minimize")), rel=1e-3)
