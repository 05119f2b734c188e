"""bench/gpu.py, the one-command GPU table, run CI-sized on the CPU so that it does not rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "gpu.py"


@pytest.mark.slow
def test_the_gpu_table_runs_on_the_cpu_at_ci_size(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH), "--device", "cpu", "--small"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split("  ")[0].strip(): line for line in done.stdout.splitlines()}
    assert rows["population 1"].split()[2] == "1" and rows["population 4"].split()[2] == "4", (
        done.stdout
    )  # trials each trained
    assert "x" in rows["population 4"].split()[-1]  # its speed against K = 1
    assert "bf16 runs on CUDA devices only" in rows["bf16 population 1"], done.stdout  # refused off CUDA, one line
    assert rows["jobs 2"].split()[2] == "4", done.stdout
    assert any(line.startswith("tests: ") and " passed, " in line for line in done.stdout.splitlines()), done.stdout
    assert list(tmp_path.iterdir()) == []  # everything in its own temporary folder
