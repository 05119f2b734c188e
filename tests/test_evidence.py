"""evidence.md: the verdict logic on synthetic measurements, and the table from a stored study."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import subprocess
import sys
import warnings

import pytest
import torch
from report_setup import SETUP

from tuner.config.experiment import Config
from tuner.measure.peak_memory import peak_step_bytes
from tuner.report.combined_evidence import combined_markdown
from tuner.report.data import Importance, OptimizerReport, Report
from tuner.report.evidence import (
    CONSISTENT,
    NO_EVIDENCE,
    NOT_CONSISTENT,
    build_evidence,
    combine,
    compare,
    evidence_markdown,
)
from tuner.report.statistics import ExpectedBest, Summary, welch_pvalue
from tuner.tasks.check import load_data
from tuner.tasks.loading import load_task


@pytest.mark.parametrize(
    ("a", "b", "expect", "verdict"),
    [
        ([3.0, 3.1, 2.9, 3.0], [7.0, 7.2, 6.9, 7.1], -1, CONSISTENT),  # clearly smaller, as claimed
        ([3.0, 3.1, 2.9, 3.0], [7.0, 7.2, 6.9, 7.1], 1, NOT_CONSISTENT),  # clearly smaller, claimed larger
        ([3.0, 5.0, 1.0], [3.5, 6.0, 1.5], -1, NO_EVIDENCE),  # inside the seeds' spread
        ([4.0], [8.0], -1, NO_EVIDENCE),  # one seed a side: no spread to judge a difference by
        ([3.0], [7.0, 7.2], -1, NO_EVIDENCE),  # one seed against spread: nothing to test with
        ([3.0, float("nan")], [7.0, 7.2], -1, NO_EVIDENCE),
        ([1.0] * 3, [2.0] * 3, -1, NO_EVIDENCE),  # three seeds a side that all agree: a rank test's best p is 0.1
        ([1.0] * 5, [2.0] * 5, -1, CONSISTENT),  # five a side: 2/252 < 0.05
        ([1.0] * 5, [2.0] * 5, 1, NOT_CONSISTENT),
    ],
)
def test_compare_decides_beyond_the_spread_only(a, b, expect, verdict):
    assert compare(a, b, expect) == verdict


def test_exact_measurements_are_compared_as_they_are():
    assert compare([4.0], [8.0], -1, exact=True) == CONSISTENT and compare([8.0], [8.0], -1, exact=True) == NO_EVIDENCE


def test_a_cell_combines_its_pairwise_verdicts():
    assert combine([CONSISTENT, CONSISTENT]) == CONSISTENT
    assert combine([CONSISTENT, NO_EVIDENCE]) == NO_EVIDENCE
    assert combine([CONSISTENT, NOT_CONSISTENT, NO_EVIDENCE]) == NOT_CONSISTENT
    assert combine([]) == NO_EVIDENCE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_first_steps_peak_memory_on_cuda_counts_adams_two_moments():
    # The peak is the larger of the backward pass's and the optimizer step's: with one example a batch the step's is
    # (on the quickstart's batches of 64 the activations of a small model outweigh Adam's state: H200, 9,610 params).
    task = load_task("digits-mlp", {"hidden": 2048})
    data = load_data(task, torch.device("cuda"))
    peaks = {
        name: peak_step_bytes(task, data, Config(name, {"lr": 1e-3}, "constant", {}, "digits-mlp", {}, 1, 1, 0))
        for name in ("SGD", "Adam")
    }
    parameters = sum(p.numel() for p in task.model().parameters())
    assert peaks["SGD"] >= 4 * parameters  # the gradients
    assert peaks["Adam"] - peaks["SGD"] >= 8 * parameters  # exp_avg and exp_avg_sq, float32


# The CPU figure is the resident set's growth in a child forked from the calling process, so it depends on what that
# process allocated and freed before (measured: Adam's lead over SGD 8 bytes a parameter from a fresh process, 11 after
# a training, 18 after keep_freed_memory and a training, 4 once after other tests): measured here from a fresh one.
PEAKS = """
import json, sys, torch
from tuner.config.experiment import Config
from tuner.measure.peak_memory import peak_step_bytes
from tuner.tasks.check import load_data
from tuner.tasks.loading import load_task
peaks = {}
for optimizer, hidden in (("Adam", 1024), ("Adam", 8192), ("SGD", 8192)):
    task = load_task("digits-mlp", {"hidden": hidden})
    config = Config(optimizer, {"lr": 1e-3}, "constant", {}, "digits-mlp", {"hidden": hidden}, 1, 64, 0)
    peaks[f"{optimizer} {hidden}"] = peak_step_bytes(task, load_data(task, torch.device("cpu")), config)
    peaks[f"parameters {hidden}"] = sum(p.numel() for p in task.model().parameters())
print(json.dumps(peaks))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the CPU's peak resident set is read from /proc/self")
def test_the_first_steps_peak_on_the_cpu_grows_with_the_optimizers_state():
    done = subprocess.run([sys.executable, "-c", PEAKS], capture_output=True, text=True, check=True)
    peaks = json.loads(done.stdout.splitlines()[-1])
    small, big, parameters = peaks["Adam 1024"], peaks["Adam 8192"], peaks["parameters 8192"]
    assert big - small > 7 * (parameters - peaks["parameters 1024"])  # the extra moments, float32, to a few pages
    # Adam's two moments over SGD's none (no momentum): 8 bytes a parameter, plus at most what its step's temporaries
    # add where they do not reuse memory freed earlier in the step (measured here: 8.0 to 14.8 bytes a parameter).
    assert 7 * parameters < big - peaks["SGD 8192"] < 20 * parameters


def record(optimizer: str, low: float, high: float) -> dict:
    """A step-size record of one tensor at two steps, η's 5th percentile ``low`` and 95th ``high``."""
    row = [low, low, (low + high) / 2, high, high]
    return {
        "percentiles": [5, 25, 50, 75, 95],
        "steps": [1, 2],
        "lr": [0.1, 0.1],
        "tensors": ["w"],
        "numel": [10],
        "effective_lr": {"w": [row, row]},
        "ratio": {"w": [row, row]},
        "optimizer": optimizer,
        "defined": True,
    }


def optimizer(
    name: str, cls: str, objective: list[float], epochs_to: list[int], spread: float, memory: float
) -> OptimizerReport:
    """One optimizer of a synthetic report: final seeds with these validation objectives, reaching 0.5 at these epochs."""
    history = [
        {"val_loss": [1.0] * (e - 1) + [0.5] * (4 - e), "val_metric": [0.0] * 3, "seconds": [1.0, 2.0, 3.0]}
        for e in epochs_to
    ]
    final = {
        "seeds": [1, 2, 3],
        "val_objective": objective,
        "history": history,
        "step_sizes": [record(cls, 1e-3, 1e-3 * spread)] * 3,
    }
    return OptimizerReport(
        name=name,
        summary=Summary(name, f"x/{name}", 0, min(objective), {}, final),
        points=[],
        best_so_far=[],
        expected=ExpectedBest([], [], []),
        cpe=math.nan,
        cpe_test=math.nan,
        loss=None,
        metric=None,
        speed=None,
        importance=Importance({}, 0),
        memory=memory,
        step_sizes=final["step_sizes"][0],
        torch_class=cls,
    )


def test_the_table_of_a_synthetic_sparse_task():
    setup = SETUP | {"task": "bag-of-words"}
    optimizers = [
        optimizer(
            "adam", "Adam", [0.30, 0.31, 0.29], [1, 2, 1], spread=40.0, memory=8.0
        ),  # clearly best; fast, but inside the spread
        optimizer("sgd", "SGD", [0.50, 0.52, 0.49], [2, 1, 2], spread=1.0, memory=0.0),
        optimizer(
            "rmsprop", "RMSprop", [0.51, 0.50, 0.52], [1, 2, 2], spread=1.5, memory=4.0
        ),  # not adaptive on this task
    ]
    report = Report("x", setup, 0.5, True, None, "", [], optimizers, "adam", [])
    rows = {row.claim: [cell.verdict for cell in row.cells] for row in build_evidence(report)}
    assert rows["adaptive learning rate"] == [CONSISTENT, CONSISTENT, NOT_CONSISTENT]
    assert rows["memory"] == [CONSISTENT, CONSISTENT, CONSISTENT]  # 8 and 4 (moderate) above 0 (low)
    assert rows["convergence speed"] == [NO_EVIDENCE] * 3
    assert rows["bias correction"] == [NO_EVIDENCE, CONSISTENT, CONSISTENT]  # Adam: not ablated here
    assert rows["suited to"] == [CONSISTENT, NO_EVIDENCE, NO_EVIDENCE]  # the task is of Adam's kind only
    text = evidence_markdown(report, build_evidence(report))
    assert (
        "0/0 trials within 5% of the best" in text
        and "η p95/p5 40 ± 0" in text
        and "final val loss 0.300 ± 0.010" in text
    )


@pytest.mark.parametrize(
    ("task", "sentence"),
    [
        ("bag-of-words", "this task has sparse gradients"),
        ("drifting-regression", "this task is a non-stationary problem"),
        ("logistic-regression", "this task trains a simple model"),
        ("t", "this task is of none of these kinds"),
    ],
)
def test_the_suited_to_row_says_what_kind_of_task_this_is_in_a_sentence(task, sentence):
    optimizers = [
        optimizer(n, c, [0.3, 0.31, 0.29], [1, 2, 1], 1.0, 4.0) for n, c in (("adam", "Adam"), ("sgd", "SGD"))
    ]
    report = Report("x", SETUP | {"task": task}, 0.5, True, None, "", [], optimizers, "adam", [])
    row = next(row for row in build_evidence(report) if row.claim == "suited to")
    assert sentence in row.test
    # SGD's claim (simple models) is tested on logistic-regression alone: elsewhere its cell says why not.
    assert row.cells[1].measured.endswith(f"({sentence})") != (task == "logistic-regression")


def test_compare_of_near_identical_values_says_nothing_on_the_console():
    # Seeds that agree to rounding: the report prints no warning (scipy's ttest_ind warns of precision loss), and the
    # p-value decides.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compare([1.0, 1.0 + 1e-15, 1.0], [1.0 + 2e-15, 1.0, 1.0 + 1e-15], -1) == NO_EVIDENCE


def test_welchs_p_value_is_scipys_ttest_ind_without_equal_variances():
    from scipy.stats import ttest_ind

    def scipys(a: list[float], b: list[float]) -> float:
        with warnings.catch_warnings():  # of precision loss, where one side's seeds (nearly) agree
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(ttest_ind(a, b, equal_var=False).pvalue)

    draw = random.Random(0)
    for _ in range(300):
        a = [draw.gauss(0.0, draw.choice([1e-4, 1.0, 5.0])) for _ in range(draw.randint(2, 7))]
        b = [draw.gauss(draw.random(), draw.choice([1e-3, 1.0, 3.0])) for _ in range(draw.randint(2, 7))]
        assert welch_pvalue(a, b) == pytest.approx(scipys(a, b), rel=1e-12)
    assert welch_pvalue([2.0, 3.0], [1.0, 1.0]) == pytest.approx(scipys([2.0, 3.0], [1.0, 1.0]))  # one side varies
    assert math.isnan(welch_pvalue([1.0, 1.0], [2.0, 2.0]))  # neither side varies: no t


def test_a_speed_cell_says_how_many_seeds_its_seconds_are_the_mean_of():
    # Epochs count every seed (a miss as epochs + 1), the seconds only those that reached the target.
    optimizers = [
        optimizer("adam", "Adam", [0.3] * 3, [1, 2, 4], 1.0, 8.0),
        optimizer("sgd", "SGD", [0.3] * 3, [2] * 3, 1.0, 4.0),
    ]
    report = Report("x", SETUP, 0.5, True, None, "", [], optimizers, "adam", [])
    row = next(row for row in build_evidence(report) if row.claim == "convergence speed")
    assert row.cells[0].measured.endswith("1.5 s (2 of 3 seeds reached it)")
    assert row.cells[1].measured.endswith("epochs, 2 s")  # every seed reached it


def test_the_claims_come_from_the_search_spaces_class_even_without_step_sizes():
    # A task with its own loop records no step sizes: the optimizer's family still comes from its study's setup.
    setup = SETUP | {"task": "t"}
    optimizers = [
        dataclasses.replace(optimizer(n, c, [0.3, 0.31, 0.29], [1, 2, 1], 1.0, m), step_sizes=None)
        for n, c, m in (("adam", "Adam", 8.0), ("sgd", "SGD", 4.0))
    ]
    rows = {
        row.claim: row for row in build_evidence(Report("x", setup, 0.5, True, None, "", [], optimizers, "adam", []))
    }
    assert [cell.claim for cell in rows["memory"].cells] == ["moderate", "low"]
    assert [cell.verdict for cell in rows["memory"].cells] == [CONSISTENT, CONSISTENT]


def test_the_title_names_the_studys_optimizers():
    optimizers = [
        optimizer(n, c, [0.3, 0.31, 0.29], [1, 2, 1], 1.0, 4.0) for n, c in (("adamw", "AdamW"), ("sgd", "SGD"))
    ]
    report = Report("x", SETUP | {"task": "t"}, 0.5, True, None, "", [], optimizers, "adamw", [])
    assert evidence_markdown(report, build_evidence(report)).splitlines()[0] == (
        "# x: the common claims about Adam and SGD, measured on t"
    )


def test_the_combined_table_names_each_cells_task():
    sparse = [
        optimizer("adam", "Adam", [0.30, 0.31, 0.29], [1, 2, 1], spread=40.0, memory=8.0),
        optimizer("sgd", "SGD", [0.50, 0.52, 0.49], [2, 1, 2], spread=1.0, memory=0.0),
        optimizer("rmsprop", "RMSprop", [0.51, 0.50, 0.52], [1, 2, 2], spread=1.5, memory=4.0),
    ]
    convex = [  # SGD clearly best; no RMSprop in this experiment
        optimizer("adam", "Adam", [0.50, 0.52, 0.49], [1, 2, 1], spread=40.0, memory=8.0),
        optimizer("sgd", "SGD", [0.30, 0.31, 0.29], [2, 1, 2], spread=1.0, memory=0.0),
    ]
    reports = [
        Report("s", SETUP | {"task": "bag-of-words"}, 0.5, True, None, "", [], sparse, "adam", []),
        Report("c", SETUP | {"task": "logistic-regression"}, 0.5, True, None, "", [], convex, "sgd", []),
    ]
    text = combined_markdown([(report, build_evidence(report)) for report in reports])
    assert text.splitlines()[0] == (
        "# The common claims about Adam, SGD and RMSprop, measured on bag-of-words and logistic-regression"
    )
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in text.splitlines() if line.startswith("| ")}
    assert [cell.strip() for cell in rows["claim"]] == ["adam (Adam)", "sgd (SGD)", "rmsprop (RMSprop)"]
    adam, sgd, rmsprop = ([line.strip() for line in cell.split("<br>")] for cell in rows["suited to"])
    assert adam[0].startswith("bag-of-words: final val loss 0.300 ± 0.010; claim: sparse gradients; **consistent**")
    assert adam[1].startswith("logistic-regression: final val loss") and adam[1].endswith(f"**{NO_EVIDENCE}**")
    assert sgd[1].startswith("logistic-regression: final val loss 0.300 ± 0.010; claim: simple models; **consistent**")
    assert rmsprop[1] == "logistic-regression: not studied"
    assert all(len(cell.split("<br>")) == 2 for cells in rows.values() for cell in cells if "claim:" in cell)
    # The "suited to" row is decided differently on each task: one line per task.
    assert "  - bag-of-words: this task has sparse gradients: the optimizer claimed suited to sparse" in text
    assert "  - logistic-regression: this task trains a simple model: the optimizer claimed suited to simple" in text
