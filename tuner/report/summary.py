"""``summary.md``: the report's table, what each column means, links to the figures and the best-config files."""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import quote

from tuner.plural import counted
from tuner.report import statistics as analysis
from tuner.report.data import Report
from tuner.report.figures import FIGURES
from tuner.tasks.loading import task_title


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def summary(report: Report, out: Path) -> str:
    """``summary.md``: one row per optimizer, what each column means, links to the figures and to the best-config
    files in ``out``."""
    label, setup = report.label, report.setup
    better = "lower" if report.direction == "minimize" else "higher"
    arrow = "≤" if report.direction == "minimize" else "≥"
    seeds = report.final_seeds
    header = [
        "optimizer",
        f"best val {label}",
        "final val (mean ± sd)",
        "final test (mean ± sd)",
        f"epochs to {arrow} {_cell(report.target, '.4g')}",
        "CPE (val)",
        "CPE (test)",
        "complete/pruned/diverged/failed",
        "state bytes/param",
    ]
    rows = [header]
    for o in report.optimizers:
        s, c, speed = o.summary, o.summary.counts, o.speed
        reached = "" if speed is None or speed.reached == speed.runs else f" ({speed.reached}/{speed.runs} seeds)"
        rows.append(
            [
                s.optimizer + (" *" if s.optimizer == report.winner else ""),
                _cell(s.best_value, ".4g"),
                analysis.over_seeds(s.final["val_objective"]) if s.final else "-",
                analysis.over_seeds(s.final["test_objective"]) if s.final else "-",
                _cell(None if speed is None else speed.epochs, ".3g") + reached,
                _cell(o.cpe, ".4g"),
                _cell(o.cpe_test, ".4g"),
                f"{c['complete']}/{c['pruned']}/{c['diverged']}/{c['failed']}",
                _cell(o.memory, ".2f"),
            ]
        )
    origin = "given" if report.target_given else "default: the least good of the optimizers' final validation means"
    task = task_title(setup["task"], setup["task_args"])
    floor = (
        "diverged and failed trials have none and are left out (the untrained model was not measured)"
        if report.untrained is None
        else f"never worse than the untrained model's ({report.untrained:.4g}), "
        "which diverged and failed trials count as"
    )
    lines = [
        f"# {report.experiment}: which optimizer trains {task} best",
        "",
        f"Objective: validation {label}, {better} is better; {counted(setup['epochs'], 'epoch')} per trial. "
        "`*` marks the winner: the best final validation mean (the single best trial, picked out of many on one "
        "seed, is optimistic).",
        "",
        analysis.table(rows),
        "",
        f"- **best val {label}**: the best trial of the study.",
        f"- **final val / final test**: {label} of the best trial's config re-trained on {_seeds(seeds)}.",
        f"- **epochs to {arrow} target** (DeepOBS's speed): the first epoch whose validation {label} reaches the "
        f"target ({_cell(report.target, '.6g')}; {origin}), mean over the final seeds; a seed that never reaches it "
        f"counts as {setup['epochs'] + 1} (epochs + 1).",
        f"- **CPE (val)** (Sivaprasad et al. 2020, on validation): the expected best validation {label} after n "
        "trials (plots/budget.png), averaged over n = 1..N with weights N - n + 1: small budgets count most, so it "
        f"rewards an optimizer that is good after few trials ({better} is better). "
        f"A trial counts with its validation {label} (a pruned one with the last it reported), {floor}. "
        f"Dodge et al.'s estimator assumes independent random-search trials; these are {report.sampling}.",
        f"- **CPE (test)**: Sivaprasad et al.'s own score: the same weighting of the expected *test* {label} of the "
        "config picked as best on validation among n trials, over the complete trials (a pruned or diverged trial has "
        f"no test value), each never worse than the untrained model's test {label}; the test split never picks. "
        "**CPE (val)** is the validation figure before it.",
        "- **state bytes/param**: bytes of `torch.optim` state per model parameter after the best config's first "
        "step (a task with its own loop: after its first epoch).",
        *[f"- note: {note}" for note in report.notes],
        "",
        "## Figures",
        "",
        *[f"- {_link(name + '.png', 'plots/' + name + '.png')}: {about}" for name, about in FIGURES.items()],
        "",
        "## Best configs",
        "",
    ]
    configs = [
        p.name for p in [out / "best.yaml", *(out / f"best-{o.name}.yaml" for o in report.optimizers)] if p.is_file()
    ]
    lines += [f"- {_link(name, name)}" for name in configs] or ["- none in this folder: `tuner study` writes them"]
    return "\n".join(lines)


def _seeds(seeds: list[int]) -> str:
    """The final seeds and what the final columns show of them, for people."""
    if len(seeds) == 1:
        return f"seed {seeds[0]} only: one value, no spread (--final-seeds 2 or more would show one)"
    return f"seeds {', '.join(map(str, seeds)) or '-'}, mean ± sd"


def _link(text: str, target: str) -> str:
    """A Markdown link to the relative path ``target`` that CommonMark keeps a link whatever the file name:
    the target percent-encoded (spaces, non-ASCII letters, parentheses), brackets in the text escaped."""
    label = text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    return f"[{label}]({quote(target, safe='/')})"
