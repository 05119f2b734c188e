"""Optuna's public API stores what its tables do, every Optuna client sees one study per (experiment, optimizer), and
an SQLite storage commits to a write-ahead log that a killed process does not lose."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import subprocess
import sys
import textwrap

import optuna
import pytest

from tuner.cli.main import main
from tuner.study import storage as tables
from tuner.study.connection import open_storage


def run(workdir, name: str) -> list[tuple[object, ...]]:
    """``tuner study`` of 3 SGD trials into ``name``.db; what it stored of each trial, wall-clock times aside."""
    url = f"sqlite:///{workdir}/{name}.db"
    args = [
        "study",
        "quickstart",
        "--optimizers",
        "sgd",
        "--trials",
        "3",
        "--epochs",
        "2",
        "--final-seeds",
        "1",
        "--no-progress",
        "--no-tracking",
        "--storage",
        url,
        "--out",
        str(workdir / name),
    ]
    assert main(args) == 0
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["quickstart/sgd"]
    trials = optuna.load_study(study_name="quickstart/sgd", storage=url).trials
    return [
        (
            t.number,
            t.state,
            t.params,
            t.values,
            t.intermediate_values,
            {k: v for k, v in t.user_attrs.items() if k != "history"},
            {k: v for k, v in t.user_attrs["history"].items() if k != "seconds"},
        )
        for t in trials
    ]


@pytest.fixture
def fresh_choice():
    tables.private_tables.cache_clear()
    yield
    tables.private_tables.cache_clear()


def test_the_public_api_fallback_stores_the_same_study_with_one_warning(workdir, monkeypatch, caplog, fresh_choice):
    monkeypatch.setenv(tables.PUBLIC_ENV, "0")
    with caplog.at_level(logging.WARNING, logger="tuner"):
        fast = run(workdir, "tables")
        assert caplog.records == []
        tables.private_tables.cache_clear()
        monkeypatch.setenv(tables.PUBLIC_ENV, "1")
        public = run(workdir, "public")
    assert fast == public and len(fast) == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"tuner: {tables.PUBLIC_ENV}=1: trials are stored through Optuna's public API (correct, slower)"
    ]


def test_an_optuna_version_not_tested_falls_back(monkeypatch, caplog, fresh_choice):
    monkeypatch.delenv(tables.PUBLIC_ENV, raising=False)
    assert tables.private_tables()
    tables.private_tables.cache_clear()
    monkeypatch.setattr(optuna, "__version__", "5.99.0")
    with caplog.at_level(logging.WARNING, logger="tuner"):
        assert not tables.private_tables()
    assert "optuna 5.99.0 is not one tuner was tested with" in caplog.text


def test_an_sqlite_storage_commits_to_a_write_ahead_log_synced_at_checkpoints(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/t.db")
    optuna.create_study(storage=storage, study_name="s")
    with storage.engine.connect() as connection:  # each new connection of the pool is set so
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    # The journal mode is the file's: any other connection (another process, the MLflow follower) finds it.
    with contextlib.closing(sqlite3.connect(tmp_path / "t.db")) as other:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_what_a_process_killed_by_sigkill_committed_to_the_log_is_kept(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    # The process dies right after its commit, before any checkpoint copies the log into the database file.
    code = textwrap.dedent(f"""
        import os, signal, optuna
        from tuner.study.connection import open_storage
        optuna.create_study(storage=open_storage({url!r}), study_name="s").enqueue_trial({{"x": 1.0}})
        os.kill(os.getpid(), signal.SIGKILL)
        """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    assert (tmp_path / "t.db-wal").stat().st_size > 0  # the commit is still in the log alone
    trials = optuna.load_study(study_name="s", storage=open_storage(url, must_exist=True)).trials
    assert [t.system_attrs.get("fixed_params") for t in trials] == [{"x": 1.0}]
