"""The report's files: ``summary.md`` and ``evidence.md``, and the figures under ``plots/``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from tuner.report import evidence
from tuner.report.data import Report
from tuner.report.figures import FIGURES, drawing
from tuner.report.summary import summary


def report_paths(out: Path) -> list[Path]:
    """The files :func:`write_report` writes into ``out``, in its order: the summary, the evidence, the figures."""
    return [out / "summary.md", out / "evidence.md", *(out / "plots" / f"{name}.png" for name in FIGURES)]


def write_texts(report: Report, out: Path) -> list[Path]:
    """Write ``out/summary.md`` and ``out/evidence.md``; their paths. Raises ``OSError`` when ``out`` cannot be
    written."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.md"
    path.write_text(summary(report, out) + "\n")
    return [path, evidence.write_evidence(report, out)]


@contextlib.contextmanager
def drawing_figures(report: Report, out: Path, complete: Callable[[], Report] | None = None) -> Iterator[list[Path]]:
    """Draw every figure into ``out/plots/`` (:func:`tuner.report.figures.drawing`: the block runs beside a child
    drawing some of them); yields their paths. ``complete``: as :func:`~tuner.report.figures.drawing` takes it.
    Raises ``OSError`` when ``out`` cannot be written."""
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    with drawing(report, folder, complete):
        yield [folder / f"{name}.png" for name in FIGURES]


def write_report(report: Report, out: Path) -> list[Path]:
    """:func:`write_texts` beside the figures' drawing: the paths written, as :func:`report_paths` lists them."""
    with drawing_figures(report, out) as figures:
        texts = write_texts(report, out)
    return [*texts, *figures]
