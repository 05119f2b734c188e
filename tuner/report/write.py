"""The report's files: ``summary.md`` and ``evidence.md``, and the figures under ``plots/``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tuner.report import evidence
from tuner.report.data import Report
from tuner.report.figures import FIGURES, draw_all
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


def draw_figures(report: Report, out: Path, complete: Callable[[], Report] | None = None) -> list[Path]:
    """Draw every figure into ``out/plots/``; their paths. ``complete``: as :func:`tuner.report.figures.draw_all`
    takes it. Raises ``OSError`` when ``out`` cannot be written."""
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    return draw_all(report, folder, complete)


def write_report(report: Report, out: Path) -> list[Path]:
    """:func:`write_texts`, then :func:`draw_figures`: the paths written, as :func:`report_paths` lists them."""
    return [*write_texts(report, out), *draw_figures(report, out)]
