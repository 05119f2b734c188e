"""README promises that no other test holds: default locations, the built-in task before a plugin of the same name,
Optuna's journal storage refused, exit code 1 for an unexpected error."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from tuner.cli.main import main
from tuner.tasks.loading import describe, load_task

TESTS = Path(__file__).resolve().parent


def test_the_default_locations_are_in_the_working_directory(workdir, capsys):
    # tuner.db, mlflow.db (with its artifacts beside it in mlruns/) and runs/<experiment>/, all in the working directory.
    assert (
        main(["study", "--optimizers", "sgd", "--trials", "1", "--epochs", "1", "--final-seeds", "1", "--no-progress"])
        == 0
    )
    assert sorted(p.name for p in workdir.iterdir()) == ["mlflow.db", "mlruns", "runs", "tuner.db"]
    assert optuna.get_all_study_names("sqlite:///tuner.db") == [
        "quickstart/sgd"
    ]  # one study per optimizer: budget slots live inside it
    assert (workdir / "runs" / "quickstart" / "best.yaml").is_file() and (
        workdir / "runs" / "quickstart" / "summary.md"
    ).is_file()
    experiment = MlflowClient("sqlite:///mlflow.db").get_experiment_by_name("quickstart")
    assert experiment.artifact_location == (workdir / "mlruns" / "quickstart").as_uri()
    assert [p.name for p in (workdir / "mlruns").iterdir()] == ["quickstart"]
    # `tuner plot` reads tuner.db and writes runs/quickstart/ by default too.
    (workdir / "runs" / "quickstart" / "summary.md").unlink()
    assert main(["plot"]) == 0
    assert (workdir / "runs" / "quickstart" / "summary.md").is_file()


def test_a_plugin_named_like_a_built_in_is_listed_but_the_built_in_is_used(tmp_path, monkeypatch):
    # An installed distribution, as pip leaves it: its metadata with an entry point in tuner's group.
    info = tmp_path / "shadow-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shadow\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tuner.tasks]\ndigits-mlp = broken_tasks:Tiny\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_task("digits-mlp").name == "digits-mlp"
    shadowed = [i for i in describe() if i.name == "digits-mlp"]
    assert next(i.origin for i in shadowed) == "built-in" and len(shadowed) == 2
    assert shadowed[1].summary == "unused: the built-in task of the same name comes first"


def test_optunas_journal_storage_is_refused_with_one_line(workdir, capsys):
    assert main(["study", "--storage", "journal.log", "--trials", "1", "--no-progress", "--no-tracking"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and err.startswith("tuner: error: --storage: cannot open 'journal.log'")
        and "sqlite:///tuner.db" in err
    )
    assert list(workdir.iterdir()) == []


def test_an_unexpected_error_is_exit_code_1(workdir):
    # A task that passes the check before training, then raises in `tuner train`: not bad input, not an interruption.
    config = {
        "format": 1,
        "optimizer": {"class": "torch.optim.SGD", "kwargs": {"lr": 0.1}},
        "schedule": {"name": "constant", "interval": "step", "params": {}},
        "training": {
            "task": "broken_tasks:FailsInTraining",
            "task_args": {},
            "epochs": 1,
            "batch_size": 4,
            "seed": 0,
            "objective": "loss",
        },
    }
    (workdir / "cfg.yaml").write_text(yaml.safe_dump(config))
    env = os.environ | {"PYTHONPATH": str(TESTS), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "tuner", "train", "cfg.yaml"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, result.stderr
    assert "ValueError: score() takes at most 8 samples, got 16" in result.stderr


def test_the_progress_bar_shows_trials_of_the_budget_best_so_far_elapsed_and_eta(workdir):
    # In a process of its own, with every update drawn (tqdm reads TQDM_* when it is imported): a trial of one epoch
    # is quicker than tqdm's 0.1 s between frames.
    env = os.environ | {"TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1"}
    args = ["study", "--optimizers", "sgd", "--trials", "2", "--epochs", "1", "--final-seeds", "1", "--no-tracking"]
    done = subprocess.run([sys.executable, "-m", "tuner", *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    best = optuna.load_study(study_name="quickstart/sgd", storage="sqlite:///tuner.db").best_trial
    frames = [f for f in re.split(r"[\r\n]", done.stderr) if f.startswith("sgd: ")]
    # tqdm's last frame: name, 100%, trials done of the budget, [elapsed<ETA, rate, best value (#trial)].
    assert re.fullmatch(
        r"sgd: 100%\|.*\| 2/2 \[\d\d:\d\d<00:00, +[0-9.]+(s/)?trials?(/s)?, best (\S+) \(#(\d+)\)\]", frames[-1]
    ), frames[-1]
    assert frames[-1].endswith(f"best {best.value:.4g} (#{best.number})]")
    assert any(" 0/2 [" in f for f in frames) and any(" 1/2 [" in f for f in frames)


@pytest.mark.slow
@pytest.mark.parametrize(("flags", "threads"), [((), max(1, (os.cpu_count() or 1) // 2)), (("--threads", "3"), 3)])
def test_jobs_split_the_cpu_cores_among_the_workers_unless_threads_says_how_many(workdir, flags, threads):
    record = workdir / "threads.txt"
    (workdir / "exp.yaml").write_text(
        f"name: threads\ntask: broken_tasks:ThreadsSeen\ntask_args: {{record: '{record}'}}\n"
        "optimizers: [sgd]\ntrials: 4\nepochs: 1\nseed: 0\n"
    )
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    args = [
        "study",
        "exp.yaml",
        "--storage",
        f"sqlite:///{workdir}/t.db",
        "--no-tracking",
        "--no-progress",
        "--final-seeds",
        "1",
        "--jobs",
        "2",
        *flags,
    ]
    done = subprocess.run([sys.executable, "-m", "tuner", *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    seen = [line.split() for line in record.read_text().splitlines()]
    workers = {name for name, _ in seen if name.startswith("tuner-worker-")}
    assert workers and {int(n) for name, n in seen if name in workers} == {threads}, seen  # 2 workers share the cores
    if flags:  # --threads holds for the command's own process too
        assert {int(n) for name, n in seen if name == "MainProcess"} == {3}, seen
