"""What the MLflow follower costs beside the study it mirrors (issue 19: tracked / untracked <= 1.05).

``python bench/follower.py [--trials 10] [--profile]`` runs ``tuner study quickstart`` in this process with tracking on
(an SQLite ``mlflow.db`` in a temporary folder), then prints the study's CPU time (this process) and the follower's
(its child, reaped: ``RUSAGE_CHILDREN``), and the follower's share. CPU time, not wall time: on a loaded machine the
share is the steady figure (5% is what 1.05 means when the training holds every core). With ``--profile`` it then
replays the follower's messages (one per stored trial, the runs questions, the ends, EOF) on the same storage into a
fresh ``mlflow.db``, in this process under cProfile, and prints where its time goes; ``--replay STORAGE`` does only
that, on a storage of ``tuner study --no-tracking``.
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
from pathlib import Path


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


def replay(folder: Path, storage: str) -> None:
    import optuna

    from tuner.tracking.follow import Session

    studies = optuna.get_all_study_names(storage)
    start = {"op": "start", "tracking_uri": f"sqlite:///{folder}/replay.db", "storage": storage}
    messages = []
    for name in studies:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        messages += [{"op": "trial", "study": name, "id": t._trial_id} for t in trials if t.state.is_finished()]
    mirrored = len(messages)
    messages += [{"op": op, "study": name, "status": "FINISHED"} for op in ("runs", "end") for name in studies]

    def run() -> None:  # what the follower's threads do, here in one thread: cProfile sees one
        session = Session(start | {"experiment": "quickstart", "studies": studies, "version": "bench"})
        session.connect()
        for message in messages:
            session.handle(message)
        session.finish()

    profile, begin = cProfile.Profile(), time.process_time()
    profile.runcall(run)
    spent = time.process_time() - begin
    print(f"replay: {spent:.2f} s CPU for {mirrored} trials ({1000 * spent / mirrored:.0f} ms a trial, all included)")
    for order in ("cumulative", "tottime"):
        pstats.Stats(profile, stream=sys.stdout).sort_stats(order).print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per optimizer (default 10)")
    parser.add_argument("--profile", action="store_true", help="then replay the follower under cProfile")
    parser.add_argument("--replay", metavar="STORAGE", help="only replay the follower on this storage's studies")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.chdir(folder)
        if args.replay:
            replay(folder, args.replay)
            return
        measure(folder, args.trials)
        if args.profile:
            replay(folder, f"sqlite:///{folder}/tuner.db")


if __name__ == "__main__":
    main()
