"""The report's files: the figures under ``plots/``, ``summary.md`` and ``evidence.md``."""

from __future__ import annotations

from pathlib import Path

from tuner.report import evidence
from tuner.report.data import Report
from tuner.report.figures import draw_all
from tuner.report.summary import summary


def write_report(report: Report, out: Path) -> list[Path]:
    """Draw every figure into ``out/plots/``, write ``out/summary.md`` and ``out/evidence.md``; the paths written, the
    summary first. Raises ``OSError`` when ``out`` cannot be written."""
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    figures = draw_all(report, folder)
    path = out / "summary.md"
    path.write_text(summary(report, out) + "\n")
    return [path, evidence.write_evidence(report, out), *figures]
