"""Several workers on one storage: `--jobs N`, several commands at once, Ctrl-C of a worker pool; the budget stays exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
from mlflow import MlflowClient

from tuner.outcomes import outcome
from tuner.study import TICKETS_PREFIX, finished


def command(workdir, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tuner", "study", "quickstart", "--optimizers", "adam", "sgd", "--epochs", "4", "--final-seeds", "1",
            "--storage", f"sqlite:///{workdir}/t.db", "--out", str(workdir / "out"), "--no-progress", *extra]


def studies(workdir) -> dict[str, optuna.Study]:
    url = f"sqlite:///{workdir}/t.db"
    return {n: optuna.load_study(study_name=n, storage=url) for n in optuna.get_all_study_names(url) if not n.startswith(TICKETS_PREFIX)}


def assert_exact(workdir, budget: int) -> None:
    found = studies(workdir)
    assert sorted(found) == ["quickstart/adam", "quickstart/sgd"]
    for study in found.values():
        counted = [t for t in study.trials if outcome(t) in ("complete", "pruned", "diverged", "failed")]
        assert len(counted) == budget == finished(study), [outcome(t) for t in study.trials]
        assert len({str(t.params) for t in counted}) == budget, "two workers trained the same configuration"


def test_jobs_2_trains_in_two_processes_to_the_exact_budget_and_mirrors_every_trial(workdir):
    uri = f"sqlite:///{workdir}/mlflow.db"
    result = subprocess.run(command(workdir, "--trials", "7", "--jobs", "2", "--tracking-uri", uri), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "2 workers" in result.stderr
    assert_exact(workdir, 7)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id], "tags.`tuner.role` = 'trial'", max_results=1000)
    assert sorted((r.data.tags["tuner.study"], int(r.data.tags["tuner.trial"])) for r in runs) == sorted(
        (name, t.number) for name, study in studies(workdir).items() for t in study.trials
    )
    assert all(r.info.status != "RUNNING" for r in runs)


def test_three_commands_at_once_on_one_sqlite_file_share_the_budget_exactly(workdir):
    procs = [subprocess.Popen(command(workdir, "--trials", "9", "--no-tracking"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "database is locked" not in err
    assert_exact(workdir, 9)


def test_ctrl_c_stops_every_worker_and_the_rerun_completes_the_budget(workdir):
    cmd = command(workdir, "--trials", "6", "--jobs", "2", "--no-tracking")
    cmd[cmd.index("--epochs") + 1] = "40"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
        try:
            if sum(len(s.trials) for s in studies(workdir).values()) >= 2:
                break
        except Exception:  # not created yet
            continue
    assert proc.poll() is None, "the study ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    interrupted = [t for s in studies(workdir).values() for t in s.trials if outcome(t) == "interrupted"]
    assert interrupted, "no worker stored its trial as interrupted"
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    assert_exact(workdir, 6)
