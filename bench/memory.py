"""How much the resident memory of ``tuner study`` grows over many trials (issue 19: under 50 MB over 200 quickstart trials).

One in-process ``tuner study`` (untracked, a fresh SQLite storage in a temporary folder) runs ``--trials`` trials per
optimizer; the process's resident set size (``VmRSS``) is read after every trial. Growth is counted from the end of
the first trial (imports, data, the first allocations are made by then) to the end of the last; the RSS after the
report is printed beside it. With the quickstart's three optimizers, ``--trials 67`` is 201 trials.

    nice python bench/memory.py                       # quickstart, 67 trials per optimizer
    python bench/memory.py --trials 10 --epochs 2     # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import pathlib
import sys
import tempfile
import time
from typing import Any

import tuner.cli.main
from tuner.study.runner import StudyRunner


def rss_mb() -> float:
    """This process's resident set size in MB (Linux: /proc/self/status)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmRSS in /proc/self/status (not Linux?)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="quickstart")
    parser.add_argument("--trials", type=tuner.cli.main.positive_int, default=67, help="per optimizer (default 67)")
    parser.add_argument("--epochs", type=tuner.cli.main.positive_int, help="default: the experiment's")
    parser.add_argument("--threads", type=tuner.cli.main.positive_int, help="default: torch's own choice")
    args = parser.parse_args()
    after_trial: list[float] = []
    run_trial = StudyRunner.run_trial

    @functools.wraps(run_trial)
    def measured(self: StudyRunner, *rest: Any) -> Any:
        try:
            return run_trial(self, *rest)
        finally:
            after_trial.append(rss_mb())

    StudyRunner.run_trial = measured  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(prefix="tuner-memory-") as folder:
        argv = ["study", args.experiment, "--trials", str(args.trials), "--storage", f"sqlite:///{folder}/m.db"]
        argv += ["--out", folder, "--no-tracking", "--no-progress"]
        argv += ["--epochs", str(args.epochs)] * bool(args.epochs) + ["--threads", str(args.threads)] * bool(
            args.threads
        )
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = tuner.cli.main.main(argv)
        seconds = time.perf_counter() - started
    if code != 0 or len(after_trial) < 2:
        sys.exit(f"tuner study exited with {code} after {len(after_trial)} trials")
    growth = after_trial[-1] - after_trial[0]
    verdict = "no verdict (fewer than 200 trials)" if len(after_trial) < 200 else "met" if growth < 50 else "NOT met"
    quarter = [after_trial[i * (len(after_trial) - 1) // 4] for i in range(5)]
    print(
        f"{len(after_trial)} trials of {args.experiment} in {seconds:.0f} s: RSS after the first {after_trial[0]:.0f} MB, "
        f"after the last {after_trial[-1]:.0f} MB (at each quarter: {', '.join(f'{m:.0f}' for m in quarter)}), "
        f"after the report {rss_mb():.0f} MB; growth {growth:+.1f} MB over {len(after_trial) - 1} trials, "
        f"target < 50 MB over 200: {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
