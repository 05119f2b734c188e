"""Where an in-process ``tuner study`` spends its time: named functions timed, SQL statements counted.

:class:`Clock` wraps each function of :data:`PARTS` with a wall clock while it is entered (a ``with`` block), and
counts the SQL statements SQLAlchemy sends (Optuna's storage; MLflow runs in the follower process, not here), by
the timed function that sent them. A timed call's time is kept by (part, the timed part it ran inside), so that the
trainer inside a trial and the trainer inside the final evaluation are told apart. A part whose function no longer
exists (renamed) is listed as missing, not an error: the instrument outlives a refactoring.
"""

from __future__ import annotations

import collections
import functools
import importlib
import math
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy
import sqlalchemy.event

ANY = "*"  # any timed part, or none
# part -> "module:attribute path" of the function timed, or several: each that exists is timed (a function that
# moved, or is imported by name into more than one module).
PARTS = {
    "prepare": "tuner.run.experiment:prepare",  # task, data, experiment checks
    "run_trial": "tuner.study.runner:StudyRunner.run_trial",  # a trial: ask, train, tell, store
    "train": ("tuner.study.runner:train", "tuner.study.final:train"),  # the trainer, in a trial or the final evaluation
    "report": "tuner.study.runner:StudyRunner._report",  # per epoch: trial.report, should_prune
    "ask": "tuner.study.runner:StudyRunner._ask",  # sampling a config
    "store": "tuner.study.runner:StudyRunner._store",  # writing the finished trial into the storage
    "take": "tuner.study.runner:StudyRunner.take",  # its budget ticket: one read of the storage
    "broken": "tuner.study.runner:StudyRunner._stop_if_broken",
    "final": "tuner.study.runner:StudyRunner.final_evaluation",
    "ablation": "tuner.measure.bias_correction:ablate",  # the final seeds again, bias correction off
    "peak": ("tuner.study.runner:peak_step_bytes", "tuner.study.final:peak_step_bytes"),
    "step_sizes": "tuner.measure.step_sizes:StepSizes.__call__",
    "step_sizes_after": "tuner.measure.step_sizes:StepSizes._after",
    "step_sizes_result": "tuner.measure.step_sizes:StepSizes.result",
    "outputs": "tuner.run.outputs:write_outputs",  # report and exported configs
    "figures": (
        "tuner.report.figures:save_figures",
        "tuner.run.outputs:draw_figures",
    ),  # the figures this process draws (draw_figures in older code: all of them)
    "child_wait": "tuner.report.figures:_succeeded",  # waiting for the forked child's figures
    "importance": "tuner.report.build:importance",  # a study's parameter importances and their bootstrap sd
    "follower_trial": (
        "tuner.tracking.mirror:Follower.trial",
        "tuner.tracking.follower:Follower.trial",
    ),  # tracking: a trial handed to the follower
    "follower_attach": ("tuner.tracking.mirror:Follower.attach", "tuner.tracking.follower:Follower.attach"),
    "follower_end": ("tuner.tracking.mirror:Follower.end", "tuner.tracking.follower:Follower.end"),
    "follower_wait": "tuner.run.experiment:_report_tracking",  # waiting for the follower to finish
}


# A trial's own parts beside its training, as printed with their CPU time.
TRIAL_PARTS = (("report", "pruner"), ("ask", "sampling"), ("store", "storing"), ("take", "ticket"))


def _resolve(target: str) -> tuple[Any, str, Callable[..., Any]]:
    """The object that holds ``target``'s function, its attribute name, and the function; AttributeError or
    ImportError if it is gone."""
    module, path = target.split(":")
    owner: Any = importlib.import_module(module)
    *outer, name = path.split(".")
    for attribute in outer:
        owner = getattr(owner, attribute)
    return owner, name, getattr(owner, name)


class Clock:
    """Times :data:`PARTS` inside a ``with`` block (see the module's docstring)."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[tuple[str, str | None]] = collections.Counter()
        # The calling thread's CPU seconds: on a loaded machine the wall clock counts other processes' turns too;
        # the gap between the two is waiting (for the disk, a lock, or a core).
        self.cpu: collections.Counter[tuple[str, str | None]] = collections.Counter()
        self.calls: collections.Counter[tuple[str, str | None]] = collections.Counter()
        self.sql: collections.Counter[tuple[str, str | None]] = collections.Counter()  # (verb, timed part)
        self.sql_seconds = 0.0
        self.missing: list[str] = []
        self._stack: list[str] = []
        self._patched: list[tuple[Any, str, Callable[..., Any]]] = []
        self._sql_started = 0.0

    def _wrap(self, part: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            key = (part, self._stack[-1] if self._stack else None)
            self._stack.append(part)
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - started
                self.cpu[key] += time.thread_time() - cpu
                self.calls[key] += 1
                self._stack.pop()

        return timed

    def _before_sql(self, conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        self.sql[(statement.split(None, 1)[0].upper(), self._stack[-1] if self._stack else None)] += 1
        self._sql_started = time.perf_counter()

    def _after_sql(self, *args: Any) -> None:
        self.sql_seconds += time.perf_counter() - self._sql_started

    def __enter__(self) -> Clock:
        for part, targets in PARTS.items():
            found = 0
            for target in (targets,) if isinstance(targets, str) else targets:
                try:
                    owner, name, function = _resolve(target)
                except (ImportError, AttributeError):
                    continue
                found += 1
                self._patched.append((owner, name, function))
                setattr(owner, name, self._wrap(part, function))
            if not found:
                self.missing.append(f"{part} ({targets})")
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", self._before_sql)
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "after_cursor_execute", self._after_sql)
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, function in reversed(self._patched):
            setattr(owner, name, function)
        self._patched = []
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", self._before_sql)
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "after_cursor_execute", self._after_sql)

    def total(self, part: str, inside: str | None = ANY) -> float:
        """Seconds in ``part``: all of its calls, or (``inside``) those that ran inside that part (None: at the top)."""
        return sum(s for (p, parent), s in self.seconds.items() if p == part and inside in (ANY, parent))

    def cpu_total(self, part: str, inside: str | None = ANY) -> float:
        """CPU seconds of the calling thread in ``part``, as :meth:`total` counts wall seconds."""
        return sum(s for (p, parent), s in self.cpu.items() if p == part and inside in (ANY, parent))

    def count(self, part: str) -> int:
        return sum(n for (p, _), n in self.calls.items() if p == part)

    def statements(self, verb: str | None = None, inside: str | None = ANY) -> int:
        """SQL statements sent (of ``verb``, e.g. SELECT), by the timed part ``inside`` (None: by none)."""
        return sum(n for (v, part), n in self.sql.items() if verb in (None, v) and inside in (ANY, part))


@dataclass
class Side:
    """A hand-written side's wall and CPU seconds, the wall seconds of its trial runs, final runs, ablation runs (the
    evidence's: bias correction off) and data loading, and how many results matched the tuner's."""

    wall: float
    cpu: float
    trials: float
    finals: float
    ablation: float
    load: float
    matched: int


def load_average() -> str:
    """The machine's 1-minute load average (a figure taken on a loaded machine says so)."""
    try:
        return pathlib.Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def busy_share(seconds: float = 2.0) -> float | None:
    """The share of the machine's CPU time spent by running processes over the next ``seconds`` (from /proc/stat), this
    one sleeping meanwhile: other processes' work, the load average's lag left out; None where /proc/stat is not."""

    def times() -> tuple[int, int]:
        fields = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait

    try:
        total, idle = times()
        time.sleep(seconds)
        total2, idle2 = times()
    except OSError:
        return None
    return 1.0 - (idle2 - idle) / max(1, total2 - total)


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def command_seconds(command: list[str], repeat: int = 3) -> float:
    """The fastest wall-clock seconds of ``repeat`` runs of ``command`` (its output dropped)."""
    best = math.inf
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - started)
    return best


# A report written in a new process, which imports what `tuner study` has imported by then (torch, with torch._dynamo
# that a first optimizer step pulls in, and Optuna): the report's own imports (matplotlib, scipy, scikit-learn with
# optuna.importance) are paid in every `tuner study`, and the in-process run counts them on no side.
FRESH_REPORT = """
import pathlib, sys, tempfile, time
import optuna, torch, torch._dynamo
from tuner.run.outputs import write_outputs
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = optuna.storages.RDBStorage(sys.argv[1])
with tempfile.TemporaryDirectory() as out:
    started, result = time.perf_counter(), []
    write_outputs(storage, sys.argv[2], pathlib.Path(out), before_figures=lambda _: result.append(time.perf_counter()))
    print(result[0] - started, time.perf_counter() - started)
"""


def fresh_report(storage: str, experiment: str) -> tuple[float, float]:
    """Seconds from the start of the report of ``experiment`` in ``storage`` to its result and to its end, written in
    a new process (:data:`FRESH_REPORT`), as `tuner study` writes its one report of a process."""
    printed = subprocess.run(
        [sys.executable, "-c", FRESH_REPORT, storage, experiment], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(printed[0]), float(printed[1])


def print_costs(clock: Clock, total: float, trials: int, bare: Side) -> None:
    """Where the untracked tuner's wall time beyond the bare loop's goes, per trial and fixed."""
    n = max(1, trials)
    top = ("prepare", "run_trial", "take", "broken", "final", "outputs")
    in_trial = clock.total("train", "run_trial")
    step_sizes = sum(clock.total(p) for p in ("step_sizes", "step_sizes_after", "step_sizes_result"))
    rows = [
        ("per trial", None),
        ("the trainer beyond the bare loop (drift: see paired)", in_trial - clock.total("report") - bare.trials),
        ("pruner: trial.report + should_prune, per epoch", clock.total("report")),
        ("sampling a config (ask)", clock.total("ask")),
        ("storing the finished trial", clock.total("store")),
        ("budget ticket and storage read (take)", clock.total("take")),
        ("broken-study check", clock.total("broken")),
        (
            "rest of a trial (tell, user attributes)",
            clock.total("run_trial") - in_trial - clock.total("ask") - clock.total("store"),
        ),
        ("fixed", None),
        (
            "final evaluation beyond the bare loop's (with ablations)",
            clock.total("final") - bare.finals - bare.ablation,
        ),
        ("  of which the ablation beyond the bare loop's", clock.total("ablation") - bare.ablation),
        ("  of which step sizes (evidence)", step_sizes),
        ("  of which peak memory (evidence)", clock.total("peak")),
        ("report and exported configs (write_outputs)", clock.total("outputs")),
        ("  of which figures drawn here (a child draws importance)", clock.total("figures")),
        ("  of which waiting for the child's figures", clock.total("child_wait")),
        ("  of which importances (0 where the child computes them)", clock.total("importance")),
        ("data loading and checks beyond the bare loop's", clock.total("prepare") - bare.load),
        ("rest (storage, study setup, printing)", total - sum(clock.total(p, None) for p in top)),
    ]
    difference = total - bare.wall
    print(f"\nwhere tuner's {total:.2f} s go beyond the bare loop's {bare.wall:.2f} s ({difference:+.2f} s):")
    print(
        "  (the sides timed one after the other: rows that subtract the bare loop's trainings carry the machine's "
        "drift, and can be negative)"
    )
    print(f"  {'':56} {'s':>7} {'ms/trial':>9} {'of diff':>8}")
    fixed = False
    for label, seconds in rows:
        if seconds is None:  # a heading
            fixed = label == "fixed"
            print(f"  {label}")
            continue
        per_trial = "" if fixed else f"{1000 * seconds / n:.1f}"
        print(f"  {label:56} {seconds:7.2f} {per_trial:>9} {100 * seconds / difference:7.0f}%")
    # A trial's own rows after the trainer's (the drift), and the fixed rows without their "of which" parts.
    heading = rows.index(("fixed", None))
    bookkeeping = sum(seconds or 0.0 for _, seconds in rows[2:heading])
    fixed_seconds = sum(seconds or 0.0 for label, seconds in rows[heading + 1 :] if not label.startswith("  "))
    print(
        f"  in short: {1000 * bookkeeping / n:.1f} ms of bookkeeping a trial, {100 * bookkeeping / bare.trials:.1f}% "
        f"of the bare loop's trials; {fixed_seconds:.2f} s fixed, which weigh less the longer the study"
    )
    cpu = ", ".join(f"{label} {1000 * clock.cpu_total(part) / n:.1f}" for part, label in TRIAL_PARTS)
    print(f"  per trial, CPU ms of the training thread: {cpu}")
    print(
        f"  the bias-correction ablation's own runs, on both sides: tuner {clock.total('ablation'):.2f} s "
        f"(with its step sizes), bare loop {bare.ablation:.2f} s"
    )
    statements, selects = clock.statements(), clock.statements("SELECT")
    in_trials = sum(clock.statements(inside=p) for p in ("run_trial", "store", "take", "ask", "broken"))
    print(
        f"  storage: {statements} SQL statements ({selects} SELECT), {clock.sql_seconds:.2f} s; per trial "
        f"{in_trials / n:.1f} statements, of them SELECT {clock.statements('SELECT', 'take') / n:.1f} in take, "
        f"{clock.statements('SELECT', 'store') / n:.1f} in store"
    )
    if clock.missing:
        print(f"  not timed (renamed or gone): {', '.join(clock.missing)}")


def print_tracking(clock: Clock, tracked: float, untracked: float, trials: int) -> None:
    """Where the tracked run's wall time beyond the untracked one's goes (MLflow itself is in the follower process)."""
    handing = clock.total("follower_trial")
    ending = clock.total("follower_attach") + clock.total("follower_end")
    waiting = clock.total("follower_wait")
    difference = tracked - untracked
    print(f"\nwith MLflow tracking: {tracked:.2f} s ({difference:+.2f} s):")
    print(f"  trials handed to the follower: {handing:.2f} s ({1000 * handing / max(1, trials):.1f} ms a trial)")
    print(f"  artifacts and ends handed over: {ending:.2f} s; waiting for the follower at the end: {waiting:.2f} s")
    print(
        f"  rest: {difference - handing - ending - waiting:+.2f} s (the follower's work while trials train, "
        "on the same cores, and the two runs' noise)"
    )
