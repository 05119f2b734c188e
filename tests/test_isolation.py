"""The suite's own guards (conftest.py): each test in a temporary working directory, a developer's environment kept
out, and a session that fails when a test writes into the checkout. Checked by running pytest on the probes below
in a child process, with the environment and the leak that the guards must catch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CHECKOUT

PROBE = os.environ.get("TUNER_TEST_PROBE")


def probe(name: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    test = f"{Path(__file__).resolve()}::test_probe_{name}"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        env=os.environ | env | {"TUNER_TEST_PROBE": name},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(PROBE != "environment", reason="run by test_a_developers_environment_reaches_no_test")
def test_probe_environment():
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(os.environ))"], capture_output=True, text=True, check=True
    )
    for names in (list(os.environ), eval(child.stdout)):
        assert [n for n in names if n.startswith(("MLFLOW_", "OPTUNA_", "TQDM_", "PG"))] == []
    cwd = Path.cwd()
    assert list(cwd.iterdir()) == [] and not cwd.is_relative_to(CHECKOUT)


@pytest.mark.skipif(PROBE != "leak", reason="run by test_a_test_that_writes_into_the_checkout_fails_the_session")
def test_probe_leak():
    (CHECKOUT / "leak-probe.db").write_text("")


def test_a_developers_environment_reaches_no_test():
    result = probe(
        "environment",
        {
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
            "OPTUNA_STORAGE": "sqlite:///x.db",
            "TQDM_DISABLE": "1",
            "PGPASSWORD": "secret",
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_a_test_that_writes_into_the_checkout_fails_the_session():
    try:
        result = probe("leak", {})
    finally:
        (CHECKOUT / "leak-probe.db").unlink(missing_ok=True)
    assert "1 passed" in result.stdout and result.returncode == 1, result.stdout + result.stderr
    assert f"tests wrote into the checkout {CHECKOUT}: leak-probe.db" in result.stdout
