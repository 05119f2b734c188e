from __future__ import annotations

import importlib.util

import pytest

from services import MlflowServer, Postgres, postgres_bin
from tuner.tasks import load_task


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
        pytest.skip("PostgreSQL's server programs (initdb, pg_ctl) are not installed: apt-get install postgresql (.ci/run does)")
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("the PostgreSQL driver psycopg (3) is not installed: pip install -e '.[test]'")
    server = Postgres(bin_dir)
    server.start()
    yield server
    server.stop()
