"""``evidence.md``: the common table of Adam vs SGD vs RMSprop claims, measured on the user's task.

One row per claim (adaptive learning rate, memory, convergence speed, bias correction, ease of tuning, suited
to), one column per optimizer. Each cell holds the measured value, the common claim and a verdict:

- ``consistent``: the measurements agree with the claim, beyond the seeds' spread;
- ``not consistent``: they disagree with it, beyond the seeds' spread;
- ``no evidence either way``: the difference is inside the spread, or nothing here can test the claim.

Relative claims (fast/moderate/slow, low/moderate, easy/moderate/hard) are tested pairwise against every
other optimizer whose claim differs: a cell is consistent when every such comparison comes out as claimed,
not consistent when one comes out the other way, and undecided otherwise. :func:`compare` decides one pair.
Everything is read from the report's data (:mod:`tuner.report.data`): nothing here trains.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.measure.bias_correction import first_step_ratio
from tuner.plural import counted
from tuner.report import statistics as analysis
from tuner.tasks.loading import task_title

if TYPE_CHECKING:
    from tuner.report.data import OptimizerReport, Report

CONSISTENT, NOT_CONSISTENT, NO_EVIDENCE = "consistent", "not consistent", "no evidence either way"
ALPHA = 0.05
# "Adaptive": the 95th percentile of the effective learning rate over a tensor's elements at least this many
# times its 5th.
SPREAD = 2.0
# Ease of tuning: a trial is "near the best" within this fraction of the best value; the budget curve read at N_TRIALS.
NEAR = 0.05
N_TRIALS = 5
# The common table, per torch.optim class; AdamW shares Adam's claims.
CLAIMS: dict[str, dict[str, str]] = {
    "adaptive learning rate": {"Adam": "adaptive", "SGD": "fixed", "RMSprop": "adaptive"},
    "memory": {"Adam": "moderate", "SGD": "low", "RMSprop": "moderate"},
    "convergence speed": {"Adam": "fast", "SGD": "slow", "RMSprop": "moderate"},
    "bias correction": {"Adam": "yes", "SGD": "no", "RMSprop": "no"},
    "ease of tuning": {"Adam": "easy", "SGD": "hard", "RMSprop": "moderate"},
    "suited to": {"Adam": "sparse gradients", "SGD": "simple models", "RMSprop": "non-stationary problems"},
}
# The built-in tasks that test a "suited to" claim, and the claim's kind.
TASK_KINDS = {
    "bag-of-words": "sparse gradients",
    "drifting-regression": "non-stationary problems",
    "logistic-regression": "simple models",
}
# What a task of each kind is, as a sentence's predicate: "this task has sparse gradients".
KIND_PREDICATES = {
    "sparse gradients": "has sparse gradients",
    "non-stationary problems": "is a non-stationary problem",
    "simple models": "trains a simple model",
}
NO_KIND = "is of none of these kinds"
LEVELS = {"low": 0, "fast": 0, "easy": 0, "moderate": 1, "slow": 2, "hard": 2}


@dataclass(frozen=True)
class Cell:
    measured: str
    claim: str
    verdict: str


@dataclass(frozen=True)
class Row:
    """One claim: its cells in the report's optimizer order, and how the verdicts were decided (``test``)."""

    claim: str
    cells: list[Cell]
    test: str


def compare(a: list[float], b: list[float], expect: int, alpha: float = ALPHA, *, exact: bool = False) -> str:
    """Whether ``a`` is smaller (``expect`` = -1) or larger (+1) than ``b`` beyond the spread over seeds (one value
    per seed).

    ``exact`` measurements (no seeds: bytes of optimizer state) are compared as they are. Otherwise each side needs two
    seeds or more: Welch's two-sided t-test at ``alpha`` (default 0.05) decides; where no seed differs from another on
    either side (Welch's t is undefined), the seeds' agreement decides only if a rank test could (its smallest
    two-sided p-value, 2 / C(n_a + n_b, n_a), is below ``alpha``: five seeds a side, not three). A non-finite value
    decides nothing."""
    if not a or not b or not all(map(math.isfinite, a + b)):
        return NO_EVIDENCE
    sign = (statistics.fmean(a) > statistics.fmean(b)) - (statistics.fmean(a) < statistics.fmean(b))
    agreed = CONSISTENT if sign == expect else NOT_CONSISTENT
    if exact:
        return NO_EVIDENCE if sign == 0 else agreed
    if min(len(a), len(b)) < 2:
        return NO_EVIDENCE
    if len(set(a)) == 1 and len(set(b)) == 1:
        return NO_EVIDENCE if sign == 0 or 2 / math.comb(len(a) + len(b), len(a)) >= alpha else agreed
    pvalue = analysis.welch_pvalue(a, b)
    if not pvalue < alpha:  # NaN decides nothing
        return NO_EVIDENCE
    return agreed


def combine(verdicts: list[str]) -> str:
    """A cell's verdict from its pairwise ones: any disagreement wins, then unanimous agreement; else undecided."""
    if NOT_CONSISTENT in verdicts:
        return NOT_CONSISTENT
    return CONSISTENT if verdicts and all(v == CONSISTENT for v in verdicts) else NO_EVIDENCE


def family(o: OptimizerReport) -> str | None:
    """The torch.optim class of an optimizer's search space (AdamW counted as Adam), as its study's setup stored it."""
    return "Adam" if o.torch_class == "AdamW" else o.torch_class


def _ordered(
    values: dict[str, list[float]], claims: dict[str, str], lower_is: int = -1, exact: bool = False
) -> dict[str, str]:
    """Per optimizer, the verdict of its claimed level against every optimizer claimed at another level (see
    :func:`compare`)."""
    verdicts = {}
    for name, claim in claims.items():
        pairs = [
            compare(values[name], values[other], lower_is * (1 if LEVELS[claim] < LEVELS[theirs] else -1), exact=exact)
            for other, theirs in claims.items()
            if other != name and claim in LEVELS and theirs in LEVELS and LEVELS[theirs] != LEVELS[claim]
        ]
        verdicts[name] = combine(pairs)
    return verdicts


def _claims(report: Report, row: str) -> dict[str, str]:
    return {o.name: CLAIMS[row].get(family(o) or "", "") for o in report.optimizers}


def _cell(measured: str, claim: str, verdict: str) -> Cell:
    return Cell(measured, claim or "no common claim", verdict if claim else NO_EVIDENCE)


def spreads(o: OptimizerReport) -> list[float]:
    """Per final seed, the median over recorded steps and tensors of the 95th over the 5th percentile of ``η``."""
    out = []
    for record in (o.summary.final or {}).get("step_sizes") or []:
        low, high = record["percentiles"].index(5), record["percentiles"].index(95)
        ratios = [
            row[high] / row[low]
            for rows in record["effective_lr"].values()
            for row in rows
            if row[low] > 0 and math.isfinite(row[high])
        ]
        out.append(statistics.median(ratios) if ratios else math.nan)
    return out


def adaptive_row(report: Report) -> Row:
    claims, cells = _claims(report, "adaptive learning rate"), []
    for o in report.optimizers:
        values = spreads(o)
        claim = claims[o.name]
        if not values or not all(map(math.isfinite, values)):
            cells.append(_cell("not recorded", claim, NO_EVIDENCE))
            continue
        adaptive = [v >= SPREAD for v in values]
        verdict = (
            NO_EVIDENCE
            if len(set(adaptive)) > 1
            else CONSISTENT
            if adaptive[0] == (claim == "adaptive")
            else NOT_CONSISTENT
        )
        cells.append(_cell(f"η p95/p5 {analysis.pm(analysis.mean_sd(values), 3)}", claim, verdict))
    test = (
        f"the effective learning rate η's 95th over its 5th percentile across a tensor's elements (median over tensors "
        f"and recorded steps), per final seed: adaptive if it is at least {SPREAD:g} on every seed, fixed if below on "
        "every seed, undecided if the seeds disagree (step_sizes.png)"
    )
    return Row("adaptive learning rate", cells, test)


def memory_row(report: Report) -> Row:
    claims = _claims(report, "memory")
    values = {o.name: [] if o.memory is None else [o.memory] for o in report.optimizers}
    verdicts = _ordered(values, claims, exact=True)
    cells = []
    for o in report.optimizers:
        peak = (o.summary.final or {}).get("peak_step_bytes")
        measured = ("-" if o.memory is None else f"{o.memory:.2f} state bytes/param") + (
            "" if peak is None else f"; first step's peak {peak / 2**20:.3g} MiB"
        )
        cells.append(_cell(measured, claims[o.name], verdicts[o.name]))
    return Row(
        "memory",
        cells,
        "bytes of optimizer state per parameter after one step (exact, no seeds): compared as they are "
        "with every optimizer claimed at another level; beside them the peak memory the first training step adds, "
        "not compared (CUDA: torch.cuda.max_memory_allocated; CPU: the growth of the peak resident set size in a "
        "forked process, to a few MB; tuner.measure.peak_memory)",
    )


def _to_target(report: Report, run: dict[str, list[float]], target: float) -> tuple[float, float]:
    """A final run's epochs and seconds to ``target`` (epochs + 1 and NaN when never reached)."""
    key = "val_loss" if report.setup["objective"] == "loss" else "val_metric"
    first = next((i for i, v in enumerate(run[key]) if analysis.reaches(v, target, report.direction)), None)
    if first is None:
        return report.setup["epochs"] + 1.0, math.nan
    seconds = run.get("seconds") or []  # histories stored before the trainer timed epochs have none
    return float(first + 1), seconds[first] if first < len(seconds) else math.nan


def speed_row(report: Report) -> Row:
    claims, target = _claims(report, "convergence speed"), report.target
    epochs, seconds = {}, {}
    for o in report.optimizers:
        history = (o.summary.final or {}).get("history") or []
        runs = [] if target is None else [_to_target(report, run, target) for run in history]
        epochs[o.name], seconds[o.name] = [e for e, _ in runs], [s for _, s in runs]
    verdicts = _ordered(epochs, claims)
    cells = []
    for o in report.optimizers:
        if not epochs[o.name]:
            cells.append(_cell("no final runs", claims[o.name], NO_EVIDENCE))
            continue
        reached = [s for s in seconds[o.name] if math.isfinite(s)]
        time = f", {statistics.fmean(reached):.3g} s" if reached else ", never reached"
        # The seconds are the mean over the seeds that reached the target, the epochs over every seed: say how many.
        misses = sum(e > report.setup["epochs"] for e in epochs[o.name])
        if reached and misses:
            n_seeds = len(epochs[o.name])
            time += f" ({n_seeds - misses} of {n_seeds} seeds reached it)"
        cells.append(
            _cell(f"{analysis.pm(analysis.mean_sd(epochs[o.name]), 3)} epochs{time}", claims[o.name], verdicts[o.name])
        )
    n = max((len(v) for v in epochs.values()), default=0)
    shown = "None" if target is None else format(target, ".4g")
    test = (
        f"epochs to the target {shown} (DeepOBS's speed; never = epochs + 1) and seconds to it (AlgoPerf's time to "
        f"target, mean over the seeds that reached it), {counted(n, 'final seed')}: Welch's t-test (two-sided, "
        f"α = {ALPHA}) on the epochs against every optimizer claimed at another speed"
    )
    return Row("convergence speed", cells, test)


def _at(runs: list[dict[str, list[float]]], epoch: int) -> list[float]:
    return [run["val_loss"][epoch - 1] for run in runs if len(run["val_loss"]) >= epoch]


def _pm_at(runs: list[dict[str, list[float]]], epoch: int) -> str:
    """The validation loss after ``epoch`` over the runs, mean ± sd."""
    return analysis.pm(analysis.mean_sd(_at(runs, epoch)), 3)


def bias_row(report: Report) -> Row:
    claims, cells = _claims(report, "bias correction"), []
    for o in report.optimizers:
        final = o.summary.final or {}
        off, claim = final.get("bias_correction_off"), claims[o.name]
        if claim == "no":
            cells.append(_cell("none in torch's update", claim, CONSISTENT))
            continue
        if not off:
            cells.append(_cell("not ablated", claim, NO_EVIDENCE))
            continue
        on_runs, off_runs = final["history"], off["history"]
        end = len(on_runs[0]["val_loss"])
        epochs = sorted({e for e in (1, 2, 3) if e <= end} | {end})
        losses = "; ".join(f"epoch {e}: {_pm_at(on_runs, e)} / {_pm_at(off_runs, e)}" for e in epochs)
        step_on = statistics.fmean(first_step_ratio(r) for r in final["step_sizes"])
        step_off = statistics.fmean(first_step_ratio(r) for r in off["step_sizes"])
        measured = f"val loss with / without: {losses}; step 1 median Δθ/g {step_on:.3g} / {step_off:.3g}"
        cells.append(_cell(measured, "yes (it helps the first epochs)", compare(_at(on_runs, 1), _at(off_runs, 1), -1)))
    test = (
        "the best Adam config re-trained on the final seeds with both correction factors removed "
        f"(tuner.measure.bias_correction): Welch's t-test (two-sided, α = {ALPHA}) on the validation loss after "
        "epoch 1, with against without; SGD and RMSprop have no correction in torch's update"
    )
    return Row("bias correction", cells, test)


def near_best(o: OptimizerReport, direction: str) -> tuple[int, int]:
    """How many of the optimizer's counted trials are worth within :data:`NEAR` of its best, and how many there are."""
    values = [p.value for p in o.points if p.value is not None and math.isfinite(p.value)]
    if not values:
        return 0, len(o.points)
    best = min(values) if direction == "minimize" else max(values)
    bound = best + NEAR * abs(best) if direction == "minimize" else best - NEAR * abs(best)
    return sum(analysis.reaches(v, bound, direction) for v in values), len(o.points)


def tuning_row(report: Report) -> Row:
    claims = _claims(report, "ease of tuning")
    counts = {o.name: near_best(o, report.direction) for o in report.optimizers}
    # Each trial as 1 (near its best) or 0: Welch's test on these is the two-proportion comparison.
    shares = {name: [1.0] * k + [0.0] * (n - k) for name, (k, n) in counts.items()}
    verdicts = _ordered(shares, claims, lower_is=1)  # easier = a larger share near the best
    cells = []
    for o in report.optimizers:
        k, n = counts[o.name]
        at = min(N_TRIALS, len(o.expected.mean))
        expected = f"; E[best of {at}] {o.expected.mean[at - 1]:.4g}" if at else ""
        cells.append(_cell(f"{k}/{n} trials within {NEAR:.0%} of the best{expected}", claims[o.name], verdicts[o.name]))
    test = (
        f"the share of each study's counted trials within {NEAR:.0%} of its best value, compared with every optimizer "
        f"claimed at another ease by Welch's t-test on the 0/1 outcomes (α = {ALPHA}; the trials are the samples, one "
        f"study each); E[best of n] is the budget curve (budget.png) at n = {N_TRIALS}, or at every trial a study has "
        "where it has fewer"
    )
    return Row("ease of tuning", cells, test)


def suited_row(report: Report) -> Row:
    """On a task of one of :data:`TASK_KINDS`, the optimizer claimed suited to that kind against every other one."""
    claims, kind = _claims(report, "suited to"), TASK_KINDS.get(report.setup["task"])
    this_task = f"this task {KIND_PREDICATES[kind] if kind else NO_KIND}"
    finals = {o.name: (o.summary.final or {}).get("val_objective") or [] for o in report.optimizers}
    better = -1 if report.direction == "minimize" else 1
    cells = []
    for o in report.optimizers:
        claim, values = claims[o.name], finals[o.name]
        measured = f"final val {report.label} {analysis.pm(analysis.mean_sd(values), 4)}" if values else "no final runs"
        if kind is None or claim != kind:
            cells.append(_cell(f"{measured} ({this_task})", claim, NO_EVIDENCE))
            continue
        verdict = combine([compare(values, theirs, better) for name, theirs in finals.items() if name != o.name])
        cells.append(_cell(measured, claim, verdict))
    test = (
        f"{this_task}: the optimizer claimed suited to {kind} against every other one, Welch's t-test "
        f"(α = {ALPHA}) on the final seeds' validation objective; the other claims need tasks of their kinds "
        "(experiments/evidence-*.yaml, joined by tuner evidence)"
        if kind
        else f"needs tasks of each kind ({', '.join(f'{k}: {v}' for v, k in TASK_KINDS.items())}); {this_task}"
    )
    return Row("suited to", cells, test)


def build_evidence(report: Report) -> list[Row]:
    """Every row of the table, in :data:`CLAIMS`' order."""
    return [
        adaptive_row(report),
        memory_row(report),
        speed_row(report),
        bias_row(report),
        tuning_row(report),
        suited_row(report),
    ]


def listed(names: list[str]) -> str:
    """``names`` once each, in order, as an English list: ``Adam, SGD and RMSprop``."""
    unique = list(dict.fromkeys(names))
    return " and ".join(filter(None, [", ".join(unique[:-1]), unique[-1]])) if unique else "no optimizer"


def families(report: Report) -> list[str]:
    """The torch.optim classes of the report's optimizers (AdamW as Adam; a space of no known class by its name)."""
    return [family(o) or o.name for o in report.optimizers]


def cell_text(cell: Cell) -> str:
    """A cell as the table shows it: measured; claim; **verdict**."""
    return f"{cell.measured}; claim: {cell.claim}; **{cell.verdict}**"


def evidence_markdown(report: Report, rows: list[Row]) -> str:
    """``evidence.md``: the table (a cell: measured; claim; **verdict**), then how each row was decided."""
    header = ["claim", *(f"{o.name} ({family(o) or '?'})" for o in report.optimizers)]
    table = [header] + [[row.claim, *map(cell_text, row.cells)] for row in rows]
    lines = [
        f"# {report.experiment}: the common claims about {listed(families(report))}, "
        f"measured on {task_title(report.setup['task'], report.setup['task_args'])}",
        "",
        "Each cell: the value measured on this task; the common claim; the verdict (consistent, not consistent, or "
        "no evidence either way when the difference is inside the seeds' spread or nothing here tests it).",
        "",
        analysis.table(table),
        "",
        "## How each row is decided",
        "",
        *[f"- **{row.claim}**: {row.test}." for row in rows],
    ]
    return "\n".join(lines)


def write_evidence(report: Report, out: Any) -> Any:
    """Write ``out/evidence.md``; returns its path."""
    path = out / "evidence.md"
    path.write_text(evidence_markdown(report, build_evidence(report)) + "\n")
    return path
