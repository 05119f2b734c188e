"""One table of what a GPU machine gives: the CUDA tests, batched populations, bf16 and ``--jobs`` per GPU.

Made for a session that is lent a CUDA machine for a few minutes: one command,
under 8 minutes on one GPU, prints one table to paste into the README::

    .venv/bin/python bench/gpu.py                  # --device cuda
    .venv/bin/python bench/gpu.py --device cpu --small   # what CI runs, so the script does not rot

Rows (each a real ``python -m tuner study`` of the quickstart's task,
``digits-mlp``, with the Adam space, on a fresh SQLite storage in a temporary
folder, tracking off, one final seed; timed end to end as a user would see it):

- ``tests``: ``TUNER_TEST_CUDA=1 pytest -k cuda`` over ``tests/``: the CUDA
  tests, bf16 among them (skipped where the device has no CUDA).
- ``population K``: ``--population K`` for K = 1, 16, 64, 256 (``--small``:
  1 and 4); tuning trials per minute, and the speedup over K = 1.
- ``bf16``: the same with ``--amp bf16`` at K = 1 and the largest K (CUDA only:
  the CLI refuses bf16 elsewhere, and the row says so).
- ``jobs``: ``--jobs N`` with N = the number of GPUs (CUDA devices are
  shared out round-robin), and twice that, at K = 1 (``--small``: 2 only).

Trials per minute are computed from the whole command's wall clock, so the fixed
costs (imports, data, the final evaluation, the report) are counted too; the
K = 1 rows run fewer trials than the large populations (a population needs at
least K trials), which the per-minute rate makes comparable.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Row:
    """One line of the table: what ran, how many trials, seconds, and why it did not run (empty if it did)."""

    name: str
    trials: int = 0
    seconds: float = 0.0
    skipped: str = ""


def study(folder: Path, name: str, device: str, trials: int, epochs: int, flags: list[str]) -> Row:
    """Time one ``tuner study`` of digits-mlp with Adam; exit code 2 (a refused flag) becomes a skipped row."""
    storage = f"sqlite:///{folder / (name.replace(' ', '-') + '.db')}"
    argv = [
        sys.executable,
        "-m",
        "tuner",
        "study",
        "quickstart",
        "--optimizers",
        "adam",
        "--trials",
        str(trials),
        "--epochs",
        str(epochs),
        "--device",
        device,
        "--storage",
        storage,
        "--no-tracking",
        "--no-progress",
        "--final-seeds",
        "1",
        "--out",
        str(folder / name.replace(" ", "-")),
        *flags,
    ]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=folder)
    seconds = time.perf_counter() - start
    if done.returncode == 2:
        return Row(name, skipped=(done.stderr.strip().splitlines() or ["refused"])[-1])
    if done.returncode != 0:
        raise SystemExit(f"bench/gpu.py: {' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return Row(name, trials, seconds)


def tests(folder: Path) -> Row:
    """Run the CUDA tests; the row gives passed/skipped from pytest's closing line."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", str(ROOT / "tests")],
        capture_output=True,
        text=True,
        cwd=folder,
        # The suite hides the GPU but from its CUDA tests (tests/conftest.py).
        env={**os.environ, "TUNER_TEST_CUDA": "1"},
    )
    seconds = time.perf_counter() - start
    closing = (done.stdout.strip().splitlines() or [""])[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|skipped|failed|error)", closing)}
    if done.returncode not in (0, 5):
        # The benchmarks still run: a lent GPU's minutes are few, and the failures are printed in full.
        print(f"bench/gpu.py: the CUDA tests failed:\n{done.stdout[-6000:]}", file=sys.stderr, flush=True)
    failed = f", {counts.get('failed', 0) + counts.get('error', 0)} FAILED" if done.returncode not in (0, 5) else ""
    return Row(f"tests: {counts.get('passed', 0)} passed, {counts.get('skipped', 0)} skipped{failed}", 0, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--small", action="store_true", help="CI-sized budgets (populations 1 and 4, a few trials)")
    args = parser.parse_args()
    populations, trials, epochs = ((1, 4), 4, 2) if args.small else ((1, 16, 64, 256), 256, 10)
    gpus = 1
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device here (use --device cpu --small)")
        gpus = 1 if ":" in args.device else torch.cuda.device_count()
    print(
        f"device {args.device}, {gpus} GPU(s), digits-mlp + adam, {epochs} epochs a trial, {os.cpu_count()} CPU cores"
    )
    print(f"{'row':26} {'trials':>6} {'wall s':>8} {'trials/min':>10} {'vs K=1':>7}", flush=True)
    runs: list[tuple[str, int, list[str]]] = [
        # K = 1 trains one trial at a time: a sixteenth of the trials gives its rate.
        (f"population {k}", max(k, trials // 16 if k == 1 else trials), ["--population", str(k)])
        for k in populations
    ]
    runs += [
        (f"bf16 population {k}", max(k, trials // 16 if k == 1 else trials), ["--population", str(k), "--amp", "bf16"])
        for k in (populations[0], populations[-1])
    ]
    runs += [
        (f"jobs {n}", max(2 * n, trials // 16), ["--jobs", str(n)]) for n in ((2,) if args.small else (gpus, 2 * gpus))
    ]
    with tempfile.TemporaryDirectory(prefix="tuner-gpu-bench-") as name:
        folder = Path(name)
        # Each row is printed as it ends: a run stopped at its time limit still shows what it measured.
        tested = tests(folder)
        show(tested, None)
        base: float | None = None
        for row_name, row_trials, flags in runs:
            row = study(folder, row_name, args.device, row_trials, epochs, flags)
            if base is None and not row.skipped:
                base = 60 * row.trials / row.seconds
            show(row, base)
    return 1 if "FAILED" in tested.name else 0


def show(row: Row, per_minute: float | None) -> None:
    """Print one row; ``per_minute`` is the K = 1 rate the speedup is computed against."""
    if row.skipped:
        print(f"{row.name:26} skipped: {row.skipped}", flush=True)
    elif row.trials == 0:
        print(f"{row.name:26} {'':6} {row.seconds:8.1f}", flush=True)
    else:
        rate = 60 * row.trials / row.seconds
        speedup = f"{rate / per_minute:6.2f}x" if per_minute else ""
        print(f"{row.name:26} {row.trials:6} {row.seconds:8.1f} {rate:10.1f} {speedup}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
