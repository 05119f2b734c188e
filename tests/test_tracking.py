"""MLflow: the layout of runs, their statuses, resume, `tuner sync`, recovery and secrets, against real stores.

Every test writes to a real MLflow store: an SQLite file in a temporary folder,
or a real `mlflow server` started on a free loopback port.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from tuner.cli.main import main
from tuner.study.connection import storage_at
from tuner.study.outcomes import outcome
from tuner.tracking.records import STATUS

FAST = ["--epochs", "3", "--final-seeds", "2", "--no-progress"]
# The README's per-epoch MLflow metrics of a trial, by history column, for the tasks used here (a task whose metric
# is its loss, quadratic-deep, logs it once).
EPOCH_METRICS = {
    "accuracy": {"train_loss": "train_loss", "val_loss": "val_loss", "val_metric": "val_accuracy", "lr": "lr"},
    "loss": {"train_loss": "train_loss", "val_loss": "val_loss", "lr": "lr"},
}


def study_args(workdir: Path, *extra: str, uri: str | None = None) -> list[str]:
    return [
        "study",
        *extra,
        "--storage",
        f"sqlite:///{workdir}/t.db",
        "--out",
        str(workdir / "out"),
        "--tracking-uri",
        uri or f"sqlite:///{workdir}/mlflow.db",
        *FAST,
    ]


def load(workdir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir}/t.db")


def layout(uri: str, experiment: str, workdir: Path | None = None) -> tuple[dict[str, object], dict[str, list[object]]]:
    """Parent runs by study name, and their child runs (active runs only, as the MLflow UI shows them).

    With ``workdir``: only the studies of that test's storage (a tracking server is shared by tests).
    """
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    studies = [r for r in runs if r.data.tags.get("tuner.role") == "study"]
    if workdir is not None:
        studies = [r for r in studies if r.data.tags["tuner.storage"] == f"sqlite:///{workdir}/t.db"]
    parents = {r.data.tags["tuner.study"]: r for r in studies}
    assert len(parents) == len(studies), "more than one parent run for a study"
    children: dict[str, list[object]] = {study: [] for study in parents}
    ids = {p.info.run_id: study for study, p in parents.items()}
    for run in runs:
        if run.data.tags.get("mlflow.parentRunId") in ids:
            children[ids[run.data.tags["mlflow.parentRunId"]]].append(run)
    return parents, children


def parent_statuses(path: Path, study: str) -> list[str]:
    """The statuses of the study's parent runs, read with sqlite3 alone, read-only: an MLflow client would create
    the store's tables if the follower has not yet, racing it, and each poll would cost a core what MLflow's
    import and migrations cost."""
    if not path.exists():
        return []
    query = (
        "SELECT runs.status FROM runs JOIN tags AS role ON role.run_uuid = runs.run_uuid JOIN tags AS study "
        "ON study.run_uuid = runs.run_uuid WHERE role.key = 'tuner.role' AND role.value = 'study' "
        "AND study.key = 'tuner.study' AND study.value = ? AND runs.lifecycle_stage = 'active'"
    )
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        try:
            return [status for (status,) in db.execute(query, (study,))]
        except sqlite3.OperationalError:  # the tables are not there yet, or a writer holds the lock
            return []


def trial_runs(children: list[object]) -> dict[int, object]:
    runs = [r for r in children if r.data.tags["tuner.role"] == "trial"]
    by_number = {int(r.data.tags["tuner.trial"]): r for r in runs}
    assert len(by_number) == len(runs), "more than one run for a trial"
    return by_number


def same(logged: float, stored: float) -> bool:
    """Equal, both NaN, or an infinity that MLflow stored as the largest float."""
    if math.isinf(stored):
        return logged == math.copysign(sys.float_info.max, stored) or logged == stored
    return logged == stored or (math.isnan(logged) and math.isnan(stored))


def stored(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials a worker stored: not its budget tickets (RUNNING, or failed once lost with a killed worker)."""
    return [t for t in study.trials if "outcome" in t.user_attrs]


def assert_mirrors(workdir: Path, uri: str, experiment: str, studies: list[str]) -> dict[str, object]:
    """MLflow holds exactly one finished child run per stored trial, with the trial's params and whole curve."""
    client = MlflowClient(uri)
    parents, children = layout(uri, experiment, workdir)
    assert sorted(parents) == sorted(studies)
    for name in studies:
        study = load(workdir, name)
        runs = trial_runs(children[name])
        assert sorted(runs) == [t.number for t in stored(study)]
        metric = study.user_attrs["setup"]["metric"]
        for trial in stored(study):
            run = runs[trial.number]
            assert run.info.status == STATUS[outcome(trial)] and run.data.tags["tuner.outcome"] == outcome(trial)
            assert run.data.tags["tuner.study"] == name and run.info.run_name == f"{name.split('/')[1]}-{trial.number}"
            kwargs = trial.user_attrs["config"]["optimizer"]["kwargs"]
            assert float(run.data.params["lr"]) == kwargs["lr"]
            assert run.data.params["schedule"] == trial.user_attrs["config"]["schedule"]["name"]
            history = trial.user_attrs.get("history")
            if history:
                for column, key in EPOCH_METRICS[metric].items():
                    logged = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
                    expected = [(e, v) for e, v in zip(history["epoch"], history[column])]
                    assert [s for s, _ in logged] == [e for e, _ in expected], key
                    assert all(same(a, b) for (_, a), (_, b) in zip(logged, expected)), key
            if trial.state.name == "COMPLETE":
                assert run.data.metrics["objective"] == trial.value
            else:
                assert "objective" not in run.data.metrics
        assert not [r for r in children[name] if r.info.status == "RUNNING"]
    return parents


def test_layout_params_metrics_final_runs_and_artifacts(workdir, capsys):
    uri = f"sqlite:///{workdir}/mlflow.db"
    assert main(study_args(workdir, "quickstart", "--trials", "3")) == 0
    studies = [f"quickstart/{n}" for n in ("adam", "sgd", "rmsprop")]
    parents = assert_mirrors(workdir, uri, "quickstart", studies)
    client = MlflowClient(uri)
    _, children = layout(uri, "quickstart")
    for name in studies:
        optimizer = name.split("/")[1]
        parent = parents[name]
        assert parent.info.run_name == optimizer and parent.info.status == "FINISHED"
        assert parent.data.tags["tuner.storage"] == f"sqlite:///{workdir}/t.db" and parent.data.tags["tuner.version"]
        assert parent.data.params["task"] == "digits-mlp" and parent.data.params["epochs"] == "3"
        assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
            f"best-{optimizer}.yaml",
            "best.yaml",
            "summary.md",
            "evidence.md",
            "plots",
        }
        assert {a.path for a in client.list_artifacts(parent.info.run_id, "plots")} == {
            f"plots/{f}.png"
            for f in ("importance", "convergence", "learning_curves", "budget", "sensitivity", "step_sizes")
        }
        exported = yaml.safe_load((workdir / "out" / f"best-{optimizer}.yaml").read_text())
        best = trial_runs(children[name])[exported["source"]["trial"]]
        assert exported["source"]["mlflow_run_id"] == best.info.run_id
        finals = sorted(
            (r for r in children[name] if r.data.tags["tuner.role"] == "final"), key=lambda r: r.data.tags["tuner.seed"]
        )
        assert [r.data.tags["tuner.seed"] for r in finals] == ["1", "2"]
        for seed, run in zip((1, 2), finals):
            assert run.data.params["seed"] == str(seed) and run.data.params["lr"] == best.data.params["lr"]
            assert run.data.tags["tuner.trial"] == str(exported["source"]["trial"]) and run.info.status == "FINISHED"
            assert run.data.metrics["test_loss"] == exported["metrics"]["final"]["test_objective"]["values"][seed - 1]
            assert "test_accuracy" in run.data.metrics and "step_size/0.weight/lr_p50" in run.data.metrics
        trial = trial_runs(children[name])[0]
        assert trial.data.params["device"] == "cpu" and trial.data.params["task"] == "digits-mlp"
        if optimizer == "adam":
            assert {"beta1", "beta2", "betas", "eps"} <= set(trial.data.params)
    assert "tracking: 15 runs in MLflow experiment 'quickstart'" in capsys.readouterr().err


def test_pruned_diverged_and_failed_trials_have_truthful_statuses(workdir, capsys, monkeypatch):
    from tuner.tasks.quadratic import QuadraticDeep

    # SGD on the quadratic diverges for lr above ~2/60; the median pruner stops the slow ones.
    (workdir / "hot.yaml").write_text("optimizer: SGD\nparams:\n  lr: {low: 1.0e-6, high: 10.0, scale: log}\n")
    (workdir / "exp.yaml").write_text(
        "name: outcomes\ntask: quadratic-deep\noptimizers: [hot.yaml]\nschedules: [constant]\ntrials: 12\nepochs: 4\nseed: 0\n"
        "sampler: random\npruner: {name: median, n_startup_trials: 2, n_warmup_steps: 1}\nfinal_seeds: 1\n"
    )
    calls = {"n": 0}
    original = QuadraticDeep.model

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("boom in user code")
        return original(self)

    monkeypatch.setattr(QuadraticDeep, "model", flaky)
    assert main([*study_args(workdir, str(workdir / "exp.yaml")), "--epochs", "4", "--final-seeds", "1"]) == 0
    study = load(workdir, "outcomes/hot")
    seen = {outcome(t) for t in study.trials}
    assert seen == {"complete", "pruned", "diverged", "failed"}, seen
    assert_mirrors(workdir, f"sqlite:///{workdir}/mlflow.db", "outcomes", ["outcomes/hot"])
    _, children = layout(f"sqlite:///{workdir}/mlflow.db", "outcomes")
    runs = trial_runs(children["outcomes/hot"])
    statuses = {outcome(t): runs[t.number].info.status for t in study.trials}
    assert statuses == {"complete": "FINISHED", "pruned": "FINISHED", "diverged": "FAILED", "failed": "FAILED"}
    failed = next(runs[t.number] for t in study.trials if outcome(t) == "failed")
    assert failed.data.tags["tuner.reason"] == "RuntimeError: boom in user code"
    assert "Traceback" in failed.data.tags["tuner.traceback"]
    diverged = next(runs[t.number] for t in study.trials if outcome(t) == "diverged")
    assert diverged.data.tags["tuner.reason"].startswith("diverged at epoch")


def test_a_trials_run_has_the_readmes_param_and_metric_names(workdir):
    (workdir / "exp.yaml").write_text(
        "name: names\ntask: digits-mlp\ntask_args: {hidden: 32}\noptimizers: [adam]\n"
        "schedules: [warmup_cosine]\nobjective: loss\ntrials: 1\nepochs: 2\nseed: 0\nfinal_seeds: 1\n"
    )
    uri = f"sqlite:///{workdir}/mlflow.db"
    assert main([*study_args(workdir, str(workdir / "exp.yaml")), "--epochs", "2", "--final-seeds", "1"]) == 0
    run = trial_runs(layout(uri, "names")[1]["names/adam"])[0]
    params = run.data.params
    assert set(run.data.metrics) == {"train_loss", "val_loss", "val_accuracy", "lr", "objective"}
    assert {
        "lr",
        "betas",
        "beta1",
        "beta2",
        "eps",
        "weight_decay",
        "schedule",
        "schedule.warmup",
        "schedule.start_factor",
        "schedule.eta_min",
        "task",
        "task_args.hidden",
        "epochs",
        "batch_size",
        "seed",
        "objective",
        "device",
    } <= set(params)
    assert (params["schedule"], params["schedule.start_factor"], params["task_args.hidden"]) == (
        "warmup_cosine",
        "0.01",
        "32",
    )
    assert (params["epochs"], params["seed"], params["objective"], params["device"]) == ("2", "0", "loss", "cpu")
    client = MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]
    assert (
        run.data.tags["tuner.role"] == "trial"
        and run.data.tags["tuner.trial"] == "0"
        and run.data.tags["tuner.outcome"] == "complete"
    )


def test_resume_logs_under_the_same_parent_and_refreshes_the_final_runs(workdir):
    uri = f"sqlite:///{workdir}/mlflow.db"
    args = study_args(workdir, "quickstart", "--optimizers", "sgd")
    assert main([*args, "--trials", "2"]) == 0
    first, _ = layout(uri, "quickstart")
    assert main([*args, "--trials", "5"]) == 0
    parents = assert_mirrors(workdir, uri, "quickstart", ["quickstart/sgd"])
    assert parents["quickstart/sgd"].info.run_id == first["quickstart/sgd"].info.run_id
    _, children = layout(uri, "quickstart")
    finals = [r for r in children["quickstart/sgd"] if r.data.tags["tuner.role"] == "final"]
    best = load(workdir, "quickstart/sgd").best_trial.number
    assert len(finals) == 2 and {r.data.tags["tuner.trial"] for r in finals} == {str(best)}


def test_sync_rebuilds_the_mirror_idempotently_and_repairs_runs_cut_short(workdir, capsys):
    uri = f"sqlite:///{workdir}/mlflow.db"
    assert (
        main([*study_args(workdir, "quickstart", "--optimizers", "adam", "sgd", "--trials", "3"), "--no-tracking"]) == 0
    )
    assert not (workdir / "mlflow.db").exists()
    sync = ["sync", "quickstart", "--storage", f"sqlite:///{workdir}/t.db", "--tracking-uri", uri]
    assert main(sync) == 0
    assert "mirrors 2 studies: 10 runs" in capsys.readouterr().out
    before = assert_mirrors(workdir, uri, "quickstart", ["quickstart/adam", "quickstart/sgd"])

    # A run cut short (the writer was killed between creating and terminating it), and a duplicate.
    client = MlflowClient(uri)
    _, children = layout(uri, "quickstart")
    runs = trial_runs(children["quickstart/adam"])
    client.delete_run(runs[1].info.run_id)
    client.create_run(runs[1].info.experiment_id, tags=runs[1].data.tags, run_name="adam-1")  # RUNNING, no metrics
    duplicate = client.create_run(runs[2].info.experiment_id, tags=runs[2].data.tags, run_name="adam-2")
    client.set_terminated(duplicate.info.run_id, "FINISHED")
    # A second parent run, as another command's follower creates at the same moment, with its copy of a trial's run.
    first = before["quickstart/sgd"]
    twin = client.create_run(first.info.experiment_id, tags=first.data.tags, run_name="sgd").info.run_id
    copied = trial_runs(children["quickstart/sgd"])[0]
    client.create_run(first.info.experiment_id, tags=copied.data.tags | {"mlflow.parentRunId": twin}, run_name="sgd-0")

    assert main(sync) == 0
    out = capsys.readouterr().out
    assert "quickstart/adam: 1 run written, 4 already there, 2 deleted" in out
    assert "quickstart/sgd: 0 runs written, 5 already there, 1 deleted" in out
    assert client.get_run(twin).info.lifecycle_stage == "deleted"
    after = assert_mirrors(workdir, uri, "quickstart", ["quickstart/adam", "quickstart/sgd"])
    assert {k: p.info.run_id for k, p in after.items()} == {k: p.info.run_id for k, p in before.items()}
    assert main(sync) == 0
    assert "0 runs written" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.slow
def test_kill_9_mid_study_loses_nothing_and_the_rerun_leaves_one_finished_run_per_trial(workdir):
    uri = f"sqlite:///{workdir}/mlflow.db"
    cmd = [sys.executable, "-m", "tuner", *study_args(workdir, "quickstart", "--optimizers", "sgd", "--trials", "4")]
    cmd[cmd.index("--epochs") + 1] = "30"
    cmd[cmd.index("--final-seeds") + 1] = "1"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # No deadline: on a loaded machine two trials of 30 epochs may take minutes, and the study ends by itself.
    while proc.poll() is None:
        time.sleep(0.2)
        try:
            if len([t for t in load(workdir, "quickstart/sgd").trials if t.state.is_finished()]) >= 2:
                break
        except Exception:  # the study may not exist yet
            continue
    assert proc.poll() is None, "the study ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = {t.number: t.value for t in load(workdir, "quickstart/sgd").trials if t.state.is_finished()}
    assert len(kept) >= 2
    # The follower outlives the killed process, mirrors what was stored and marks the parent KILLED.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and parent_statuses(workdir / "mlflow.db", "quickstart/sgd") != ["KILLED"]:
        time.sleep(0.5)
    parents, _ = layout(uri, "quickstart")
    assert parents["quickstart/sgd"].info.status == "KILLED"
    assert_mirrors(workdir, uri, "quickstart", ["quickstart/sgd"])

    assert subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode == 0
    after = assert_mirrors(workdir, uri, "quickstart", ["quickstart/sgd"])
    assert after["quickstart/sgd"].info.run_id == parents["quickstart/sgd"].info.run_id
    assert after["quickstart/sgd"].info.status == "FINISHED"
    study = load(workdir, "quickstart/sgd")
    assert len(stored(study)) == 4 and {t.number: t.value for t in study.trials if t.number in kept} == kept


def test_ctrl_c_closes_the_runs_and_the_rerun_resumes_under_the_same_parent(workdir, capsys, monkeypatch):
    from tuner.study.runner import StudyRunner

    uri = f"sqlite:///{workdir}/mlflow.db"
    original = StudyRunner.run_trial
    calls = {"n": 0}

    def interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(StudyRunner, "run_trial", interrupted)
    args = study_args(workdir, "quickstart", "--optimizers", "adam", "--trials", "4")
    assert main(args) == 130
    parents, children = layout(uri, "quickstart")
    assert parents["quickstart/adam"].info.status == "KILLED"
    assert sorted(trial_runs(children["quickstart/adam"])) == [0, 1]
    monkeypatch.setattr(StudyRunner, "run_trial", original)
    assert main(args) == 0
    after = assert_mirrors(workdir, uri, "quickstart", ["quickstart/adam"])
    assert after["quickstart/adam"].info.run_id == parents["quickstart/adam"].info.run_id


@pytest.mark.slow
def test_a_real_ctrl_c_mid_trial_stores_it_interrupted_kills_its_run_and_the_parent_and_the_rerun_completes(workdir):
    uri = f"sqlite:///{workdir}/mlflow.db"
    # Trials of 30 unpruned epochs (half a second or more each): the signal lands in the trial that has just started.
    (workdir / "long.yaml").write_text(
        "name: quickstart\ntask: digits-mlp\noptimizers: [adam]\ntrials: 3\nepochs: 30\nseed: 0\npruner: none\n"
    )
    cmd = [sys.executable, "-m", "tuner", *study_args(workdir, str(workdir / "long.yaml"))]
    cmd[cmd.index("--epochs") + 1] = "30"
    cmd[cmd.index("--final-seeds") + 1] = "1"
    # SIGINT at its default, as in a terminal (a shell without job control starts `&` jobs with SIGINT ignored).
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 600
    done = 0
    while done < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            done = len(stored(load(workdir, "quickstart/adam")))  # trained and stored, not a budget slot in flight
        except Exception:  # the study does not exist yet, or is being created
            continue
    assert done == 2 and proc.poll() is None, f"{done} trials stored, exit code {proc.poll()}"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the command's process group (the follower has its own)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; finished trials are kept" in err and "Traceback" not in err
    trials = load(workdir, "quickstart/adam").trials
    assert [outcome(t) for t in trials] == ["complete", "complete", "interrupted"], err
    kept = {t.number: (t.value, t.params) for t in trials[:2]}
    assert trials[2].state.name == "FAIL" and len(trials[2].intermediate_values) < 30

    # The follower outlives the command: it mirrors the interrupted trial as KILLED and closes the parent KILLED.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        parents, children = layout(uri, "quickstart")
        if parents["quickstart/adam"].info.status != "RUNNING" and len(trial_runs(children["quickstart/adam"])) == 3:
            break
        time.sleep(0.5)
    assert parents["quickstart/adam"].info.status == "KILLED"
    runs = trial_runs(children["quickstart/adam"])
    assert runs[2].info.status == "KILLED" and runs[2].data.tags["tuner.outcome"] == "interrupted"
    assert [runs[n].info.status for n in (0, 1)] == ["FINISHED", "FINISHED"]
    assert_mirrors(workdir, uri, "quickstart", ["quickstart/adam"])

    rerun = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    trials = load(workdir, "quickstart/adam").trials
    assert [outcome(t) for t in trials] == ["complete", "complete", "interrupted", "complete"]
    assert {t.number: (t.value, t.params) for t in trials[:2]} == kept
    after = assert_mirrors(workdir, uri, "quickstart", ["quickstart/adam"])
    assert after["quickstart/adam"].info.run_id == parents["quickstart/adam"].info.run_id
    assert after["quickstart/adam"].info.status == "FINISHED"


# --------------------------------------------------------------------------
# A real tracking server.


def test_a_study_logs_over_http_to_a_real_server_and_no_password_leaks(workdir, mlflow_server, capsys):
    secret = "s3cr3t-pw"
    uri = mlflow_server.uri.replace("http://", f"http://alice:{secret}@")
    assert main(study_args(workdir, "quickstart", "--optimizers", "adam", "--trials", "3", uri=uri)) == 0
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err and "alice:***@" in captured.err
    assert_mirrors(workdir, mlflow_server.uri, "quickstart", ["quickstart/adam"])
    client = MlflowClient(mlflow_server.uri)
    parents, children = layout(mlflow_server.uri, "quickstart", workdir)
    parent = parents["quickstart/adam"]
    local = client.download_artifacts(parent.info.run_id, "best.yaml", str(workdir))
    assert yaml.safe_load(Path(local).read_text())["source"]["tracking_uri"] == uri.replace(secret, "***")
    for run in [parent, *children["quickstart/adam"]]:
        assert secret not in str(run.data.params) + str(run.data.tags)
    for path in (workdir / "out").glob("*.*"):
        assert secret not in path.read_text()


def test_a_server_lost_mid_study_costs_no_trial_and_sync_fills_the_gap(workdir, mlflow_server, capsys, monkeypatch):
    from tuner.study.runner import StudyRunner

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    original = StudyRunner.run_trial
    calls = {"n": 0}

    def lose_the_server(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            mlflow_server.stop()
        return original(self, *args)

    monkeypatch.setattr(StudyRunner, "run_trial", lose_the_server)
    try:
        assert (
            main(study_args(workdir, "quickstart", "--optimizers", "sgd", "--trials", "5", uri=mlflow_server.uri)) == 0
        )
        err = capsys.readouterr().err
        assert "the MLflow mirror is incomplete" in err and "python -m tuner sync" in err
        assert len(load(workdir, "quickstart/sgd").trials) == 5  # nothing lost on the Optuna side
        mlflow_server.start()
        assert (
            main(["sync", "quickstart", "--storage", f"sqlite:///{workdir}/t.db", "--tracking-uri", mlflow_server.uri])
            == 0
        )
        parents = assert_mirrors(workdir, mlflow_server.uri, "quickstart", ["quickstart/sgd"])
        assert parents["quickstart/sgd"].info.status == "FINISHED"
    finally:
        if mlflow_server.proc.poll() is not None:
            mlflow_server.start()  # for the tests after this one


def test_the_tracking_uri_comes_from_the_environment(workdir, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert main(["study", "--trials", "1", "--storage", f"sqlite:///{workdir}/t.db", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (
        "MLFLOW_TRACKING_URI: cannot reach the MLflow server at 'http://127.0.0.1:9'" in err
        and len(err.splitlines()) == 1
    )
    assert not (workdir / "t.db").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/env.db")
    assert (
        main(
            [
                "study",
                "--trials",
                "1",
                "--epochs",
                "1",
                "--final-seeds",
                "1",
                "--optimizers",
                "sgd",
                "--storage",
                f"sqlite:///{workdir}/t.db",
                "--no-progress",
            ]
        )
        == 0
    )
    assert layout(f"sqlite:///{workdir}/env.db", "quickstart")[0]


def test_artifacts_go_next_to_the_sqlite_tracking_store_not_into_the_working_directory(workdir):
    store = workdir / "elsewhere"
    store.mkdir()
    uri = f"sqlite:///{store}/mlflow.db"
    assert main(study_args(workdir, "quickstart", "--optimizers", "adam", "--trials", "1", uri=uri)) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quickstart")
    assert experiment.artifact_location == (store / "mlruns" / "quickstart").as_uri()
    parent = next(iter(layout(uri, "quickstart")[0].values()))
    assert (store / "mlruns" / "quickstart" / parent.info.run_id / "artifacts" / "best.yaml").is_file()
    assert sorted(p.name for p in workdir.iterdir()) == ["elsewhere", "out", "t.db"]


def test_a_stored_final_evaluation_is_mirrored_at_once_and_the_end_writes_nothing_more(workdir):
    """The ``final`` message (sent after each study's final evaluation) writes its runs then, while the next study
    trains, rather than in the end's sync, which the command waits for; the end then keeps them as they are."""
    from tuner.tracking.follow import Session

    args = ["study", "--optimizers", "adam", "--trials", "2", "--storage", f"sqlite:///{workdir}/t.db"]
    assert main([*args, "--out", str(workdir / "out"), "--no-tracking", *FAST]) == 0
    uri, study = f"sqlite:///{workdir}/mlflow.db", "quickstart/adam"
    start = {"tracking_uri": uri, "storage": f"sqlite:///{workdir}/t.db", "experiment": "quickstart"}
    session = Session(start | {"op": "start", "studies": [study], "version": "test"})
    # As in a study: the trials are stored (and mirrored) before the final evaluation.
    final = load(workdir, study).user_attrs["final"]
    load(workdir, study).set_user_attr("final", None)
    for trial in stored(load(workdir, study)):
        session.handle({"op": "trial", "study": study, "id": trial._trial_id})
    assert session.count.written == 2
    load(workdir, study).set_user_attr("final", final)
    session.handle({"op": "final", "study": study})
    _, children = layout(uri, "quickstart")
    finals = [r for r in children[study] if r.data.tags["tuner.role"] == "final"]
    assert sorted(r.data.tags["tuner.seed"] for r in finals) == ["1", "2"] and session.count.written == 4
    assert all(r.info.status == "FINISHED" and "step_size/0.weight/lr_p50" in r.data.metrics for r in finals)
    kept = session.count.kept
    session.handle({"op": "end", "study": study, "status": "FINISHED"})
    assert session.finish()["written"] == 4 and session.count.kept == kept + 4
    assert_mirrors(workdir, uri, "quickstart", [study])
    assert {r.info.run_id for r in layout(uri, "quickstart")[1][study]} >= {r.info.run_id for r in finals}


def test_the_follower_closes_the_storage_before_its_report_so_no_write_ahead_log_is_left(workdir):
    """Once the training process is gone (killed), the follower holds the last connection to an SQLite storage: it
    closes it before reporting (its exit skips the final garbage collection, which would have closed it)."""
    import io
    import json

    from tuner.tracking.follow import follow

    args = ["study", "--optimizers", "sgd", "--trials", "2", "--storage", f"sqlite:///{workdir}/t.db"]
    assert main([*args, "--out", str(workdir / "out"), "--no-tracking", *FAST]) == 0
    assert not (workdir / "t.db-wal").exists()
    start = {"op": "start", "tracking_uri": f"sqlite:///{workdir}/mlflow.db", "storage": f"sqlite:///{workdir}/t.db"}
    lines = [start | {"experiment": "quickstart", "studies": ["quickstart/sgd"], "version": "test"}]
    # Read through a storage closed at once: a connection of this process left open would keep the log itself.
    with storage_at(f"sqlite:///{workdir}/t.db") as storage:
        study = optuna.load_study(study_name="quickstart/sgd", storage=storage)
        lines += [{"op": "trial", "study": "quickstart/sgd", "id": t._trial_id} for t in stored(study)]
    reply = io.StringIO()
    follow(io.StringIO("".join(json.dumps(line) + "\n" for line in lines)), reply)
    assert json.loads(reply.getvalue())["runs"] == 4  # 2 trials, 2 final runs: the study synced whole
    assert not (workdir / "t.db-wal").exists() and not (workdir / "t.db-shm").exists()
