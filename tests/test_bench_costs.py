"""bench/costs.py, make bench's account of where tuner's time goes: it must follow the code it times."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tuner.cli.main import main
from tuner.study.runner import StudyRunner

SOURCE = Path(__file__).resolve().parent.parent / "bench" / "costs.py"


def load_costs():
    spec = importlib.util.spec_from_file_location("bench_costs", SOURCE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_timed_function_still_exists():
    with load_costs().Clock() as clock:
        pass
    assert clock.missing == []  # a renamed function would leave its row of make bench's table at 0


def test_a_study_under_the_clock_is_timed_per_part_and_left_as_it_was(tmp_path):
    run_trial = StudyRunner.run_trial
    budget = ["--optimizers", "adam", "--trials", "2", "--epochs", "1", "--final-seeds", "1"]
    flags = [
        "--storage",
        f"sqlite:///{tmp_path}/t.db",
        "--out",
        str(tmp_path / "out"),
        "--no-tracking",
        "--no-progress",
    ]
    with load_costs().Clock() as clock:
        code = main(["study", "quickstart", *budget, *flags])
    assert code == 0
    assert StudyRunner.run_trial is run_trial  # unwrapped on exit
    assert clock.count("run_trial") == 2 and clock.count("final") == 1
    assert clock.total("train", "run_trial") > 0 and clock.total("train", "final") > 0  # told apart by where it ran
    assert clock.total("train") == clock.total("train", "run_trial") + clock.total("train", "final")
    assert clock.statements("SELECT", "take") >= 2  # each trial's budget look reads the storage
    assert clock.statements() > clock.statements("SELECT")
