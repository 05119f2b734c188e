"""Does tuned Adam (NAdam) lose to tuned momentum SGD when its space contains momentum SGD (Choi et al. 2019)?

For each shipped experiment named (default: ``quadratic-deep`` and
``quickstart``, i.e. digits-mlp), runs ``tuner study`` in-process with the same
budget for every space (default: ``sgd``, ``adam``, ``adam-wide``,
``nadam-wide``), on a fresh SQLite storage in a temporary folder, MLflow
tracking off, and prints one markdown table row per space: the best config's
final validation and test objective, mean ± sd over the final seeds, the
tuning value of the best trial, and the wall-clock seconds of the whole
experiment. "Not worse beyond the seeds' spread" reads: the adaptive space's
final mean is within the larger of the two sds of SGD's, or better.

Run from the repository root (a few minutes on 2 busy cores at the defaults)::

    nice .venv/bin/python bench/inclusion.py
    nice .venv/bin/python bench/inclusion.py quadratic-deep --trials 24 --final-seeds 5 --population 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import tuner
from tuner.cli.main import main as tuner_main


def run(experiment: str, spaces: list[str], args: argparse.Namespace, folder: Path) -> float:
    """One ``tuner study`` of ``experiment`` over ``spaces`` into ``folder``; its wall-clock seconds."""
    command = [
        "study",
        experiment,
        "--optimizers",
        *spaces,
        "--trials",
        str(args.trials),
        "--final-seeds",
        str(args.final_seeds),
        "--population",
        str(args.population),
        "--storage",
        f"sqlite:///{folder}/bench.db",
        "--out",
        str(folder / "out"),
        "--no-progress",
        "--no-tracking",
    ]
    if args.epochs:
        command += ["--epochs", str(args.epochs)]
    start = time.perf_counter()
    if tuner_main(command) != 0:
        raise SystemExit(f"tuner study {experiment} failed")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "experiments", nargs="*", default=["quadratic-deep", "quickstart"], help="shipped experiments or paths"
    )
    parser.add_argument(
        "--spaces", nargs="+", default=["sgd", "adam", "adam-wide", "nadam-wide"], help="the spaces compared"
    )
    parser.add_argument("--trials", type=int, default=16, help="trials per space (default 16)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the experiment's)")
    parser.add_argument("--final-seeds", type=int, default=3, help="final seeds (default 3)")
    parser.add_argument("--population", type=int, default=8, help="trials trained at once (default 8)")
    args = parser.parse_args()
    print(f"budget: {args.trials} trials per space, final seeds {args.final_seeds}, population {args.population}")
    print(
        "| experiment | space | epochs | best trial | final val (mean ± sd) | final test (mean ± sd) | s (whole experiment) |"
    )
    print("|---|---|---|---|---|---|---|")
    for experiment in args.experiments:
        with tempfile.TemporaryDirectory() as tmp:
            seconds = run(experiment, args.spaces, args, Path(tmp))
            for space in args.spaces:
                config = tuner.load_config(Path(tmp) / "out" / f"best-{space}.yaml")
                final = config.metrics["final"]
                val, test = final["val_objective"], final["test_objective"]
                print(
                    f"| {experiment} | {space} | {config.epochs} | {config.metrics['tuning']['val_objective']:.4f} "
                    f"| {val['mean']:.4f} ± {val['sd']:.4f} | {test['mean']:.4f} ± {test['sd']:.4f} | {seconds:.0f} |"
                )


if __name__ == "__main__":
    main()
