"""Optuna's public API stores what its tables do, and every Optuna client sees one study per (experiment, optimizer)."""

from __future__ import annotations

import logging

import optuna
import pytest

from tuner.cli.main import main
from tuner.study import storage as tables


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
