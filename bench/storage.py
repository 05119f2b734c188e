"""What each tuning trial costs in storage work: statements sent to the storage, and seconds, per trial.

Runs ``tuner study`` in-process twice on fresh SQLite files in a temporary
folder, with ``--trials`` SMALL and LARGE (one optimizer, one epoch, no
tracking, no final seeds beyond one), and counts the SQL statements the
process sends (SQLAlchemy's ``before_cursor_execute`` event, by kind) and the
CPU time of the process (all its threads: a shared machine's load does not
count). Per trial = (LARGE - SMALL) / (LARGE - SMALL trials): the fixed
costs (imports, data, report) cancel. A heartbeat every 5 s adds an UPDATE
now and then. Then, from the LARGE run's in-process clocks (``bench/costs.py``),
what a trial's budget ticket (``take``) and its storing (``store``) cost, in
wall-clock and CPU milliseconds: the wall clock counts the waits for the disk
(a commit's fsyncs) that CPU time does not, and on a loaded machine the other
processes' turns too. Usage: ``python bench/storage.py [--small 10 --large 50]``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy

from tuner.cli.main import main

sys.path.insert(0, str(Path(__file__).parent))
from costs import TRIAL_PARTS, Clock, load_average


def study(folder: Path, trials: int, counts: collections.Counter, clock: Clock) -> float:
    """CPU seconds of one ``tuner study`` of ``trials`` trials, its parts timed by ``clock``; ``counts`` gains its
    statements by kind."""
    counts.clear()
    args = [
        "study",
        "quickstart",
        "--optimizers",
        "adam",
        "--trials",
        str(trials),
        "--epochs",
        "1",
        "--final-seeds",
        "1",
        "--no-progress",
        "--no-tracking",
        "--storage",
        f"sqlite:///{folder}/{trials}.db",
        "--out",
        str(folder / str(trials)),
    ]
    start = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()), clock:
        assert main(args) == 0
    return time.process_time() - start


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--large", type=int, default=50)
    args = parser.parse_args()
    counts: collections.Counter = collections.Counter()

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        counts[statement.split(None, 1)[0].upper()] += 1

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", count)
    load = load_average()
    with tempfile.TemporaryDirectory() as folder:
        study(Path(folder), 1, counts, Clock())  # one-off imports
        seconds, statements = {}, {}
        for trials in (args.small, args.large):
            clock = Clock()
            seconds[trials] = study(Path(folder), trials, counts, clock)
            statements[trials] = dict(counts)
    n = args.large - args.small
    per_kind = {
        k: (statements[args.large].get(k, 0) - statements[args.small].get(k, 0)) / n for k in statements[args.large]
    }
    print(
        f"per trial ({args.small} -> {args.large} trials, 1 epoch of digits-mlp each): "
        f"{1000 * (seconds[args.large] - seconds[args.small]) / n:.1f} ms CPU, statements "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(per_kind.items()) if v)
    )
    print(
        f"per trial of the {args.large}-trial run, wall / CPU ms: "
        + ", ".join(
            f"{label} {1000 * clock.total(part) / args.large:.1f} / {1000 * clock.cpu_total(part) / args.large:.1f}"
            for part, label in TRIAL_PARTS
        )
        + f"; load average before/after {load} / {load_average()}"
    )


if __name__ == "__main__":
    main_bench()
