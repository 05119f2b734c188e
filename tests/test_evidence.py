"""evidence.md: the verdict logic on synthetic measurements, and the table from a stored study."""

from __future__ import annotations

import pytest

from tuner.evidence import CONSISTENT, NO_EVIDENCE, NOT_CONSISTENT, combine, compare


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
