"""What the MLflow follower costs beside the study it mirrors, and where its time goes (issue 19: tracked / untracked
<= 1.05).

``python bench/follower.py [--trials 10] [--profile]`` runs ``tuner study quickstart`` in this process with tracking on
(an SQLite ``mlflow.db`` in a temporary folder), then prints the study's CPU time (this process) and the follower's
(its child, reaped: ``RUSAGE_CHILDREN``), and the follower's share. CPU time, not wall time: on a loaded machine the
share is the steady figure (5% is what 1.05 means when the training holds every core). Then it mirrors the same
storage again, into a fresh ``mlflow.db``, in this process, phase by phase, as the follower does (importing MLflow,
opening the new store, each trial's run as it is stored, each study's final runs, the end's sync of each study), and
prints each phase's CPU time, per run and per metric; ``--profile`` adds cProfile's view of the same. ``--replay
STORAGE`` does only that, on a storage of ``tuner study --no-tracking``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def measure(folder: Path, trials: int) -> None:
    import tuner

    self0, children0, wall0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    tuner.run_experiment(
        "quickstart",
        trials=trials,
        storage=f"sqlite:///{folder}/tuner.db",
        tracking_uri=f"sqlite:///{folder}/mlflow.db",
        out=folder / "out",
        no_progress=True,
        quiet=True,
    )
    study, follower = cpu(resource.RUSAGE_SELF) - self0, cpu(resource.RUSAGE_CHILDREN) - children0
    print(
        f"study: {study:.2f} s CPU, {time.perf_counter() - wall0:.1f} s wall; follower: {follower:.2f} s CPU "
        f"= {100 * follower / study:.1f}% of the study's (load average {os.getloadavg()[0]:.1f})"
    )


class Phases:
    """CPU seconds (``time.process_time``: this process, every thread) by phase, with the runs and metrics written."""

    def __init__(self) -> None:
        self.rows: dict[str, list[float]] = {}  # phase -> [CPU s, runs, metrics]

    def time(self, phase: str, action: Callable[..., Any], *args: Any, runs: int = 0, metrics: int = 0) -> Any:
        begin = time.process_time()
        result = action(*args)
        row = self.rows.setdefault(phase, [0.0, 0, 0])
        row[0] += time.process_time() - begin
        row[1] += runs
        row[2] += metrics
        return result

    def print(self) -> None:
        for phase, (seconds, runs, metrics) in self.rows.items():
            each = f" ({1000 * seconds / runs:.1f} ms a run, {runs} runs, {metrics} metrics)" if runs else ""
            print(f"  {phase:44} {seconds:6.2f} s CPU{each}")
        print(f"  {'all':44} {sum(row[0] for row in self.rows.values()):6.2f} s CPU")


def mirror_by_phase(folder: Path, storage: str) -> Phases:
    """Mirror every study of ``storage`` into a new ``mlflow.db``, as the follower does, phase by phase."""
    import optuna

    from tuner.tracking.mirror import Mirror

    phases = Phases()
    phases.time("importing MLflow", __import__, "mlflow")
    studies = optuna.get_all_study_names(storage)
    uri = f"sqlite:///{folder}/replay.db"
    rdb = optuna.storages.RDBStorage(storage)
    mirror = phases.time(
        "opening a new mlflow.db (tables, migrations)", Mirror, uri, "quickstart", rdb, storage, "bench"
    )
    for study in studies:
        phases.time("a study's parent run", mirror.parent, study, "RUNNING")
        for record in mirror.records(study):
            kind = "final runs" if record.key.startswith("final/") else "trial runs"
            phases.time(kind, mirror.write, study, record, runs=1, metrics=len(record.metrics))
    for study in studies:
        phases.time("the end's sync of each study (all there)", mirror.sync, study)
        phases.time("the end's sync of each study (all there)", mirror.parent, study, "FINISHED")
    return phases


def replay(folder: Path, storage: str, profile: bool) -> None:
    profiler = cProfile.Profile() if profile else None
    phases = profiler.runcall(mirror_by_phase, folder, storage) if profiler else mirror_by_phase(folder, storage)
    print(f"mirrored again, phase by phase (load average {os.getloadavg()[0]:.1f}):")
    phases.print()
    if profiler:
        for order in ("cumulative", "tottime"):
            pstats.Stats(profiler, stream=sys.stdout).sort_stats(order).print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per optimizer (default 10)")
    parser.add_argument("--profile", action="store_true", help="profile the phase-by-phase mirror with cProfile")
    parser.add_argument("--replay", metavar="STORAGE", help="only mirror this storage's studies, phase by phase")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.chdir(folder)
        if not args.replay:
            measure(folder, args.trials)
        replay(folder, args.replay or f"sqlite:///{folder}/tuner.db", args.profile)


if __name__ == "__main__":
    main()
