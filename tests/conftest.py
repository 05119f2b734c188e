from __future__ import annotations

import pytest

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
