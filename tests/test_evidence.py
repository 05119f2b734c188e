"""evidence.md: the verdict logic on synthetic measurements, and the table from a stored study."""

from __future__ import annotations

import pytest
import torch

from tuner.config import Config
from tuner.evidence import CONSISTENT, NO_EVIDENCE, NOT_CONSISTENT, combine, compare
from tuner.peak_memory import peak_step_bytes
from tuner.tasks import load_data, load_task


@pytest.mark.parametrize(
    ("a", "b", "expect", "verdict"),
    [
        ([3.0, 3.1, 2.9, 3.0], [7.0, 7.2, 6.9, 7.1], -1, CONSISTENT),  # clearly smaller, as claimed
        ([3.0, 3.1, 2.9, 3.0], [7.0, 7.2, 6.9, 7.1], 1, NOT_CONSISTENT),  # clearly smaller, claimed larger
        ([3.0, 5.0, 1.0], [3.5, 6.0, 1.5], -1, NO_EVIDENCE),  # inside the seeds' spread
        ([4.0], [8.0], -1, CONSISTENT),  # exact measurements (no spread): compared as they are
        ([8.0], [8.0], -1, NO_EVIDENCE),
        ([3.0], [7.0, 7.2], -1, NO_EVIDENCE),  # one seed against spread: nothing to test with
        ([3.0, float("nan")], [7.0, 7.2], -1, NO_EVIDENCE),
    ],
)
def test_compare_decides_beyond_the_spread_only(a, b, expect, verdict):
    assert compare(a, b, expect) == verdict


def test_a_cell_combines_its_pairwise_verdicts():
    assert combine([CONSISTENT, CONSISTENT]) == CONSISTENT
    assert combine([CONSISTENT, NO_EVIDENCE]) == NO_EVIDENCE
    assert combine([CONSISTENT, NOT_CONSISTENT, NO_EVIDENCE]) == NOT_CONSISTENT
    assert combine([]) == NO_EVIDENCE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CPU's peak is not measured)")
def test_the_first_steps_peak_memory_on_cuda_counts_adams_two_moments():
    task = load_task("digits-mlp")
    data = load_data(task, torch.device("cuda"))
    peaks = {name: peak_step_bytes(task, data, Config(name, {"lr": 1e-3}, "constant", {}, "digits-mlp", {}, 1, 64, 0)) for name in ("SGD", "Adam")}
    parameters = sum(p.numel() for p in task.model().parameters())
    assert peaks["Adam"] - peaks["SGD"] >= 8 * parameters  # exp_avg and exp_avg_sq, float32


def test_the_peak_memory_is_not_measured_on_the_cpu():
    task = load_task("digits-mlp")
    assert peak_step_bytes(task, load_data(task, torch.device("cpu")), Config("SGD", {"lr": 0.1}, "constant", {}, "digits-mlp", {}, 1, 64, 0)) is None
