"""bench/costs.py, make bench's account of where tuner's time goes: it must follow the code it times; bench/overhead.py's
bare loop redoes every training the tuner did."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tuner.cli.main import main
from tuner.study.runner import StudyRunner

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load_costs():
    return load("costs")


def study(tmp_path) -> str:
    """A ``tuner study`` of 2 one-epoch Adam trials and 1 final seed into ``tmp_path``; its storage URL."""
    url = f"sqlite:///{tmp_path}/t.db"
    budget = ["--optimizers", "adam", "--trials", "2", "--epochs", "1", "--final-seeds", "1"]
    flags = ["--storage", url, "--out", str(tmp_path / "out"), "--no-tracking", "--no-progress"]
    assert main(["study", "quickstart", *budget, *flags]) == 0
    return url


def test_every_timed_function_still_exists():
    with load_costs().Clock() as clock:
        pass
    assert clock.missing == []  # a renamed function would leave its row of make bench's table at 0


def test_a_study_under_the_clock_is_timed_per_part_and_left_as_it_was(tmp_path):
    run_trial = StudyRunner.run_trial
    with load_costs().Clock() as clock:
        study(tmp_path)
    assert StudyRunner.run_trial is run_trial  # unwrapped on exit
    assert clock.count("run_trial") == 2 and clock.count("final") == 1
    assert clock.total("train", "run_trial") > 0 and clock.total("train", "final") > 0  # told apart by where it ran
    assert clock.total("train") == clock.total("train", "run_trial") + clock.total("train", "final")
    assert clock.cpu_total("train", "run_trial") > 0 and clock.cpu_total("train", "final") > 0  # CPU time, as wall
    assert clock.statements("SELECT", "take") >= 2  # each trial's budget look reads the storage
    assert clock.statements() > clock.statements("SELECT")


def test_the_bare_loop_redoes_every_training_of_the_tuner_ablation_included(tmp_path):
    overhead = load("overhead")
    runs = overhead.read_runs(study(tmp_path))
    assert sorted(r.kind for r in runs) == ["ablation", "final", "trial", "trial"]  # Adam: bias correction ablated
    bare = overhead.time_side(runs, "cpu")
    assert bare.matched == len(runs)  # the same validation values, the ablation's too
    assert bare.trials > 0 and bare.finals > 0 and bare.ablation > 0


def test_the_report_is_written_again_in_a_new_process_its_result_before_its_end(tmp_path):
    result, end = load_costs().fresh_report(study(tmp_path), "quickstart")
    assert 0 < result < end


def test_a_paired_run_follows_every_training_with_the_bare_loops_and_restores_the_trainer(tmp_path):
    import tuner.study.runner

    train = tuner.study.runner.train
    with load("paired").Paired(load("overhead").bare_run) as paired:
        study(tmp_path)
    assert tuner.study.runner.train is train
    assert paired.runs == 4  # 2 trials, a final run and an ablation run
    assert paired.bare_seconds > 0 and paired.load_seconds > 0
    for times in (paired.trainer, paired.bare_loop):  # both sides' trainings, by kind of run
        assert sorted(times) == ["ablation", "final", "trial"] and all(seconds > 0 for seconds in times.values())
    assert sum(paired.bare_loop.values()) == pytest.approx(paired.bare_seconds)
    tuner_seconds, bare_seconds, ratio = paired.ratio(100.0)
    assert tuner_seconds + bare_seconds == 100.0 and ratio == tuner_seconds / bare_seconds


def test_the_share_of_the_cores_other_processes_use_is_read_from_proc_stat():
    share = load_costs().busy_share(0.2)
    assert share is None or 0.0 <= share <= 1.0  # None off Linux
