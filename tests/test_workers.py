"""Several workers on one storage: `--jobs N`, several commands at once, PostgreSQL and a tracking server, kill -9 and
Ctrl-C of workers; the budget stays exact, nothing finished is lost, and a password never leaks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from tuner.errors import mask_url
from tuner.study.budget import TICKETS_PREFIX
from tuner.study.outcomes import finished, outcome

TESTS = Path(__file__).resolve().parent
# Every test here runs several processes, or a server.
pytestmark = pytest.mark.slow


def command(
    workdir, *extra: str, storage: str | None = None, out: str = "out", experiment: str = "quickstart"
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tuner",
        "study",
        experiment,
        "--optimizers",
        "adam",
        "sgd",
        "--epochs",
        "4",
        "--final-seeds",
        "1",
        "--storage",
        storage or f"sqlite:///{workdir}/t.db",
        "--out",
        str(workdir / out),
        "--no-progress",
        *extra,
    ]


def studies(workdir, storage: str | None = None) -> dict[str, optuna.Study]:
    url = storage or f"sqlite:///{workdir}/t.db"
    return {
        n: optuna.load_study(study_name=n, storage=url)
        for n in optuna.get_all_study_names(url)
        if not n.startswith(TICKETS_PREFIX)
    }


# What a process needs to load tests/started_together.py's task.
TOGETHER_ENV = os.environ | {
    "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    "PYTHONDONTWRITEBYTECODE": "1",
}


def together(workdir: Path, parties: int, workers_only: bool = False, first_trial: bool = False) -> str:
    """An experiment named quickstart whose task (digits-mlp) is handed out once ``parties`` processes have loaded it
    (``first_trial``: whose processes meet at their first trial instead, see tests/started_together.py)."""
    path = workdir / "together.yaml"
    path.write_text(
        "name: quickstart\ntask: started_together:digits\n"
        f"task_args: {{parties: {parties}, folder: {workdir / 'met'}, workers_only: {str(workers_only).lower()}, "
        f"first_trial: {str(first_trial).lower()}}}\n"
        "seed: 0\n"
    )
    return str(path)


def assert_exact(workdir, budget: int, storage: str | None = None) -> None:
    found = studies(workdir, storage)
    assert sorted(found) == ["quickstart/adam", "quickstart/sgd"]
    for study in found.values():
        counted = [t for t in study.trials if outcome(t) in ("complete", "pruned", "diverged", "failed")]
        assert len(counted) == budget == finished(study), [outcome(t) for t in study.trials]
        assert len({str(t.params) for t in counted}) == budget, "two workers trained the same configuration"


def assert_concurrent(workdir, processes: int) -> None:
    """``processes`` processes each trained some of the trials, and trials of different ones overlap in time (they did
    not run one after another)."""
    trials = [t for study in studies(workdir).values() for t in study.trials]
    assert len({t.user_attrs["worker"] for t in trials}) == processes
    assert any(
        a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
        for a in trials
        for b in trials
        if a.user_attrs["worker"] != b.user_attrs["worker"]
    )


def assert_one_run_per_trial(tracking: str, storage: str) -> list[object]:
    """Every trial of ``storage`` has exactly one MLflow child run, none RUNNING; the runs (parents included)."""
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("quickstart").experiment_id
    mine = f"tags.`tuner.storage` = '{mask_url(storage)}'"
    parents = client.search_runs([experiment], f"{mine} and tags.`tuner.role` = 'study'", max_results=100)
    assert sorted(p.data.tags["tuner.study"] for p in parents) == ["quickstart/adam", "quickstart/sgd"]
    children = [
        r
        for p in parents
        for r in client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{p.info.run_id}'", max_results=1000)
    ]
    trials = [r for r in children if r.data.tags["tuner.role"] == "trial"]
    assert sorted((r.data.tags["tuner.study"], int(r.data.tags["tuner.trial"])) for r in trials) == sorted(
        (name, t.number)
        for name, study in studies(None, storage).items()
        for t in study.trials
        if "outcome" in t.user_attrs  # not a ticket
    )
    assert all(r.info.status != "RUNNING" for r in [*parents, *children])
    return [*parents, *children]


def stored(storage: str) -> dict[tuple[str, int], tuple[object, ...]]:
    """What the storage holds of each finished trial: its state, value and params (a ticket, RUNNING or lost, is none)."""
    return {
        (name, t.number): (t.state, t.value, t.params)
        for name, study in studies(None, storage).items()
        for t in study.trials
        if "outcome" in t.user_attrs
    }


# A budget ticket is a trial of the study that no worker stored: RUNNING while it trains, FAIL once lost with its worker.
TICKET = "not exists (select 1 from trial_user_attributes a where a.trial_id = t.trial_id and a.key = 'outcome')"


def tickets(storage: str, *states: str) -> set[tuple[str, int]]:
    """The budget tickets in ``states`` (RUNNING: a trial is training), by study and number (PostgreSQL; one query)."""
    import psycopg

    query = f"select s.study_name, t.number from trials t join studies s using (study_id) where t.state = any(%s) and {TICKET}"
    with psycopg.connect(storage) as connection:
        try:
            return set(connection.execute(query, (list(states),)).fetchall())
        except psycopg.errors.UndefinedTable:  # no study yet
            return set()


def stored_count(storage: str) -> int:
    import psycopg

    query = f"select count(*) from trials t where not {TICKET}"
    with psycopg.connect(storage) as connection:
        try:
            return connection.execute(query).fetchone()[0]
        except psycopg.errors.UndefinedTable:  # no study yet
            return 0


def wait_mid_trial(storage: str, more_than: int, lost: set[tuple[str, int]], proc: subprocess.Popen) -> None:
    """Wait until more than ``more_than`` trials are stored and a trial has just started: a RUNNING ticket, not ``lost``,
    that the look before did not see (the trial has most of its seconds ahead)."""
    deadline = time.monotonic() + 180
    seen: set[tuple[str, int]] | None = None
    while time.monotonic() < deadline and proc.poll() is None:
        if stored_count(storage) > more_than:
            now = tickets(storage, "RUNNING") - lost
            if seen is not None and now - seen:
                return
            seen = now
        time.sleep(0.1)
    raise AssertionError(f"no trial was stored beyond {more_than}, or none started after (exit code {proc.poll()})")


def command_lines_with(text: str, roots: set[int]) -> set[tuple[str, ...]]:
    """The command lines holding ``text`` of the processes ``roots`` and all their descendants."""
    parents, lines = {}, {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                lines[int(entry.name)] = (entry / "cmdline").read_bytes()
        except OSError:  # ended meanwhile, or not ours to read
            continue

    def descends(pid: int) -> bool:
        while pid > 1:
            if pid in roots:
                return True
            pid = parents.get(pid, 0)
        return False

    return {
        tuple(line.decode().split("\0")[:-1]) for pid, line in lines.items() if text.encode() in line and descends(pid)
    }


def workers_of(pid: int) -> list[int]:
    """The `--jobs` worker processes of the command ``pid`` (spawned children; not the resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid
                and b"spawn_main" in (entry / "cmdline").read_bytes()
            ):
                found.append(int(entry.name))
        except OSError:  # ended meanwhile
            continue
    return found


def test_jobs_2_trains_in_two_processes_to_the_exact_budget_and_mirrors_every_trial(workdir):
    uri = f"sqlite:///{workdir}/mlflow.db"
    # The workers meet once loaded, as the commands of the next test do: a worker that starts late on a loaded
    # machine may otherwise find the budget trained by the other one.
    experiment = together(workdir, parties=2, workers_only=True)
    result = subprocess.run(
        command(workdir, "--trials", "7", "--jobs", "2", "--tracking-uri", uri, experiment=experiment),
        capture_output=True,
        text=True,
        env=TOGETHER_ENV,
    )
    assert result.returncode == 0, result.stderr
    assert "2 workers" in result.stderr
    assert_exact(workdir, 7)
    assert_concurrent(workdir, 2)  # the command's own process trains nothing while its workers run
    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("quickstart").experiment_id], "tags.`tuner.role` = 'trial'", max_results=1000
    )
    assert sorted((r.data.tags["tuner.study"], int(r.data.tags["tuner.trial"])) for r in runs) == sorted(
        (name, t.number) for name, study in studies(workdir).items() for t in study.trials
    )
    assert all(r.info.status != "RUNNING" for r in runs)


def test_three_commands_at_once_on_one_sqlite_file_share_the_budget_exactly(workdir):
    # The commands meet at their first trial, each with its budget ticket (tests/started_together.py): otherwise the
    # last one to start on a loaded machine may find the budget already trained, and rightly train nothing (CI once
    # saw two of three commands train all 9 trials of 4 epochs while the third was still opening the storage).
    experiment = together(workdir, parties=3, first_trial=True)
    cmd = command(workdir, "--trials", "9", "--no-tracking", experiment=experiment)
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=TOGETHER_ENV)
        for _ in range(3)
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "database is locked" not in err
    assert_exact(workdir, 9)
    assert_concurrent(workdir, 3)


def long_trials(workdir) -> str:
    """An experiment of the quickstart's task whose trials last a second or two, never pruned: signals land mid-trial."""
    (workdir / "long.yaml").write_text(
        "name: quickstart\ntask: digits-mlp\noptimizers: [adam]\ntrials: 6\nepochs: 80\nseed: 0\npruner: none\n"
    )
    return str(workdir / "long.yaml")


def test_ctrl_c_stops_every_worker_and_the_rerun_completes_the_budget(workdir):
    cmd = command(workdir, "--trials", "6", "--jobs", "2", "--no-tracking", experiment=long_trials(workdir))
    cmd[cmd.index("--epochs") + 1] = "80"
    # SIGINT as a terminal leaves it: a shell without job control starts background jobs (a CI script's `&`) with
    # SIGINT ignored, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
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
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    interrupted = [t for s in studies(workdir).values() for t in s.trials if outcome(t) == "interrupted"]
    assert interrupted, "no worker stored its trial as interrupted"
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    assert_exact(workdir, 6)


def test_three_workers_on_postgresql_and_a_tracking_server_share_the_budget_and_never_leak_the_password(
    workdir, postgres, mlflow_server
):
    storage = postgres.database()
    # Two commands at once, one of them with two workers: three workers, one budget per optimizer.
    procs = [
        subprocess.Popen(
            [
                *command(workdir, "--trials", "8", *jobs, storage=storage, out=f"out{i}"),
                "--tracking-uri",
                mlflow_server.uri,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, jobs in enumerate([("--jobs", "2"), ()])
    ]
    # The commands were given the password on their command line; the processes they start (workers, MLflow followers)
    # never are: the only command lines with it are the commands' own (a child forked before it runs another program
    # shows its parent's for a moment).
    secret = postgres.PASSWORD
    showing, deadline = set(), time.monotonic() + 600
    while any(proc.poll() is None for proc in procs) and time.monotonic() < deadline:
        showing |= command_lines_with(secret, {proc.pid for proc in procs})
        time.sleep(0.2)
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        outputs.append(out + err)
    assert showing == {tuple(proc.args) for proc in procs}
    assert_exact(workdir, 8, storage)
    runs = assert_one_run_per_trial(mlflow_server.uri, storage)

    assert "tuner:***@127.0.0.1" in outputs[0]
    for text in outputs:
        assert secret not in text
    for run in runs:
        assert secret not in str(run.data.params) + str(run.data.tags)
    for folder in (
        workdir,
        mlflow_server.folder / "artifacts",
    ):  # the exported YAML, report and MLflow's copies of them
        for path in folder.rglob("*"):
            assert not path.is_file() or secret.encode() not in path.read_bytes(), path
    assert secret not in mlflow_server.log()
    for study in studies(workdir, storage).values():
        assert secret not in str(study.user_attrs) + str([t.user_attrs for t in study.trials])


def test_kill_9_again_and_again_loses_no_finished_trial_and_the_last_run_meets_the_budget(
    workdir, postgres, mlflow_server
):
    storage = postgres.database()
    cmd = [
        *command(workdir, "--trials", "6", storage=storage, experiment=long_trials(workdir)),
        "--tracking-uri",
        mlflow_server.uri,
    ]
    cmd[cmd.index("--epochs") + 1] = "80"
    kept: dict[tuple[str, int], tuple[object, ...]] = {}
    for kill in range(1, 4):  # kill -9 of the command mid-trial, each time once more trials are stored
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_mid_trial(storage, len(kept), tickets(storage, "RUNNING", "FAIL"), proc)
        proc.kill()
        proc.wait()
        now = stored(storage)
        assert {key: now.get(key) for key in kept} == kept, "a finished trial changed or vanished"
        kept = now
        # With nobody left alive, a ticket still RUNNING (or failed as stale) is a trial cut short: one per kill.
        assert len(tickets(storage, "RUNNING", "FAIL")) == kill
    assert len(kept) < 12
    # The fourth run loses both its workers, at least one of them mid-trial, and meets the budget by itself.
    proc = subprocess.Popen([*cmd, "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_mid_trial(storage, len(kept), tickets(storage, "RUNNING", "FAIL"), proc)
    workers = workers_of(proc.pid)
    assert len(workers) == 2, workers
    for worker in workers:
        os.kill(worker, signal.SIGKILL)
    _out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "workers ended early: tuner-worker-0 (exit code -9), tuner-worker-1 (exit code -9)" in err
    now = stored(storage)
    assert {key: now.get(key) for key in kept} == kept
    assert_exact(workdir, 6, storage)
    assert_one_run_per_trial(mlflow_server.uri, storage)
    # The trials cut short left no trial behind (trials are written whole), only their tickets: 4, or 5 if the
    # second worker was training too.
    assert len(tickets(storage, "RUNNING", "FAIL")) in (4, 5)


def test_bad_postgresql_urls_are_one_line_without_the_password_and_bad_input_leaves_the_database_empty(
    workdir, postgres, capsys
):
    import psycopg

    from tuner.cli.main import main

    storage = postgres.database()
    wrong = storage.replace(postgres.PASSWORD, "not-the-pw-1234")
    for url, extra, expect in [
        (wrong, [], "password authentication failed"),
        (storage.rsplit("/", 1)[0] + "/no_such_db", [], 'database "no_such_db" does not exist'),
        (storage, ["--optimizers", "lion"], "'lion'"),
    ]:
        assert main(["study", "--no-progress", "--no-tracking", "--storage", url, *extra]) == 2
        captured = capsys.readouterr()
        assert len(captured.err.splitlines()) == 1 and captured.out == "", captured.err
        assert expect in captured.err and "Traceback" not in captured.err
        assert postgres.PASSWORD not in captured.err and "not-the-pw-1234" not in captured.err
    with psycopg.connect(storage) as connection:
        assert connection.execute(
            "select count(*) from information_schema.tables where table_schema = 'public'"
        ).fetchone() == (0,)
    assert list(workdir.iterdir()) == []
