"""One ``evidence.md`` over several experiments: every claim's row covers every task, each cell naming its task.

One experiment's table (:mod:`tuner.report.evidence`) can test the "suited to" claim of one kind of task only; the
shipped evidence experiments (``experiments/evidence-*.yaml``) run a task of each kind. This joins their tables: one
column per optimizer (the search space's name, in the order first met), one row per claim, and in each cell one line
per experiment: its task, then that experiment's cell with its verdict, as its own ``evidence.md`` gives it.

Everything is read from the stored studies through :func:`tuner.report.data.build_report` (which trains nothing; it
takes one step of each best config to count its optimizer state, as ``tuner plot`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna

from tuner.report import statistics as analysis
from tuner.report.build import build_report, load_studies
from tuner.report.data import Report
from tuner.report.evidence import Row, build_evidence, cell_text, families, family, listed


@dataclass(frozen=True)
class Stored:
    """An experiment to read: its name in the storage, its speed target (None: the default), and where the name
    came from (for messages: ``experiments/evidence-sparse.yaml: name``)."""

    name: str
    target: float | None
    where: str


def combined_evidence(
    storage: optuna.storages.BaseStorage, experiments: list[Stored]
) -> list[tuple[Report, list[Row]]]:
    """Each experiment's report and evidence rows, read from ``storage``; raises UserError (naming ``where``) for an
    experiment with no studies there."""
    # The importances (importance.png's only) are left pending: evidence.md does not show them.
    reports = [
        build_report(load_studies(storage, e.name, where=e.where), target=e.target, importances=False)
        for e in experiments
    ]
    return [(report, build_evidence(report)) for report in reports]


def _labels(reports: list[Report]) -> list[str]:
    """Each experiment's task name; prefixed with the experiment's name where two experiments share a task."""
    tasks = [report.setup["task"] for report in reports]
    if len(set(tasks)) == len(tasks):
        return tasks
    return [f"{report.experiment}: {task}" for report, task in zip(reports, tasks)]


def combined_markdown(parts: list[tuple[Report, list[Row]]]) -> str:
    """The combined ``evidence.md``: a cell holds one line per experiment (``task: measured; claim; **verdict**``;
    ``task: not studied`` where the experiment has no such optimizer), then how each row was decided, per task where
    the experiments decided it differently. ``parts`` are :func:`combined_evidence`'s, each with the same claims."""
    reports = [report for report, _ in parts]
    labels = _labels(reports)
    columns: dict[str, str] = {}  # optimizer name -> its torch.optim class, in the order first met
    for report in reports:
        for o in report.optimizers:
            columns.setdefault(o.name, family(o) or "?")
    table = [["claim", *(f"{name} ({cls})" for name, cls in columns.items())]]
    decided = []
    for index, claim in enumerate(row.claim for row in parts[0][1]):
        cells = []
        for name in columns:
            lines = []
            for label, (report, rows) in zip(labels, parts):
                names = [o.name for o in report.optimizers]
                text = cell_text(rows[index].cells[names.index(name)]) if name in names else "not studied"
                lines.append(f"{label}: {text}")
            cells.append("<br>".join(lines))
        table.append([claim, *cells])
        tests = [rows[index].test for _, rows in parts]
        if len(set(tests)) == 1:
            decided.append(f"- **{claim}**: {tests[0]}.")
        else:
            decided += [f"- **{claim}**:", *(f"  - {label}: {test}." for label, test in zip(labels, tests))]
    optimizers = listed([cls for report in reports for cls in families(report)])
    return "\n".join(
        [
            f"# The common claims about {optimizers}, measured on {listed(labels)}",
            "",
            f"From the experiments {listed([r.experiment for r in reports])}. Each cell: per task, the value measured "
            "on it; the common claim; the verdict (consistent, not consistent, or no evidence either way when the "
            'difference is inside the seeds\' spread or nothing on that task tests it). The "suited to" claims are '
            "each tested on the task of their kind only.",
            "",
            analysis.table(table),
            "",
            "## How each row is decided",
            "",
            *decided,
        ]
    )


def write_combined_evidence(storage: optuna.storages.BaseStorage, experiments: list[Stored], out: Path) -> Path:
    """Write ``out/evidence.md`` over ``experiments`` (creating ``out``); returns its path. Raises UserError as
    :func:`combined_evidence` does, before anything is written."""
    text = combined_markdown(combined_evidence(storage, experiments))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "evidence.md"
    path.write_text(text + "\n")
    return path
