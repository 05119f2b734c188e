from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# The suite checks what CI checks, on the CPU (bit-for-bit reruns, equality with torch.optim, `auto` meaning cpu):
# on a machine with a GPU it stays hidden from the tests and the processes they start, before torch is imported,
# unless TUNER_TEST_CUDA=1 (`make test` then runs the CUDA tests, `-k cuda`, so; bench/gpu.py too).
if os.environ.get("TUNER_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest
from services import MlflowServer, Postgres, postgres_bin

from tuner.tasks.loading import load_task

CHECKOUT = Path(__file__).resolve().parent.parent
# Variables that tuner, MLflow, Optuna, tqdm or libpq read: a developer's own (a tracking server in
# MLFLOW_TRACKING_URI, say) must not reach the tests nor the processes they start.
ISOLATED_PREFIXES = ("MLFLOW_", "OPTUNA_", "TQDM_", "PG")
# Written by Python and pytest themselves, not by the tests.
CACHES = {".git", "__pycache__", ".pytest_cache"}
CHECKOUT_BEFORE = pytest.StashKey[set]()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: several processes, real signals or servers; `-m 'not slow'` leaves them out"
    )
    for name in [name for name in os.environ if name.startswith(ISOLATED_PREFIXES)]:
        del os.environ[name]


def checkout_files() -> set[str]:
    """Every file and folder of the checkout, but virtual environments and caches."""
    found = set()
    for folder, subfolders, files in os.walk(CHECKOUT):
        subfolders[:] = [d for d in subfolders if d not in CACHES and not (Path(folder, d) / "pyvenv.cfg").exists()]
        found.update(os.path.relpath(os.path.join(folder, name), CHECKOUT) for name in subfolders + files)
    return found


def pytest_sessionstart(session):
    session.config.stash[CHECKOUT_BEFORE] = checkout_files()


def pytest_sessionfinish(session, exitstatus):
    new = sorted(checkout_files() - session.config.stash[CHECKOUT_BEFORE])
    if new:
        session.config.get_terminal_writer().line(
            f"tests wrote into the checkout {CHECKOUT}: {', '.join(new)}", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def temporary_cwd(tmp_path_factory, monkeypatch):
    """Every test runs in an empty temporary working directory of its own: what a test (or tuner's defaults) writes
    there never lands in the checkout; a test that looks at the defaults uses ``workdir``."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def digits():
    task = load_task("digits-mlp")
    return task, task.data()


@pytest.fixture(scope="session")
def quadratic():
    task = load_task("quadratic-deep")
    return task, task.data()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory, like a user's project folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` shared by the session's tests (each test tells its runs apart by their storage)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session; ``postgres.database()`` gives each test a fresh database's URL."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL's server programs (initdb, pg_ctl) are not installed: apt-get install postgresql (.ci/run does)"
        )
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("the PostgreSQL driver psycopg (3) is not installed: pip install -e '.[test]'")
    server = Postgres(bin_dir)
    server.start()
    yield server
    server.stop()
