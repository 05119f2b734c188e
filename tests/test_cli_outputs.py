"""What the commands print and write on one small tracked study: the counts in their messages, `tuner train` on one
seed, the same random numbers in every optimizer's trial k, and `tuner plot` writing the best configs `tuner study`
wrote. Real SQLite storage and MLflow store, one trial of one epoch per optimizer."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuner.cli.main import main

EXPERIMENT = """name: t
task: digits-mlp
task_args: {hidden: 16}
optimizers: [adam, sgd]
trials: 1
epochs: 1
seed: 0
final_seeds: 1
pruner: none
"""


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A folder where `tuner study exp.yaml` ran, tracked; its stderr and the best configs' text, by file name."""
    folder = tmp_path_factory.mktemp("tracked")
    (folder / "exp.yaml").write_text(EXPERIMENT)
    stderr = io.StringIO()
    before = Path.cwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            assert (
                main(
                    [
                        "study",
                        "exp.yaml",
                        *common(folder),
                        "--out",
                        "out",
                        "--no-progress",
                        "--tracking-uri",
                        uri(folder),
                    ]
                )
                == 0
            )
    finally:
        os.chdir(before)
    configs = {p.name: p.read_text() for p in sorted((folder / "out").glob("best*.yaml"))}
    return folder, stderr.getvalue(), configs


def common(folder: Path) -> list[str]:
    return ["--storage", f"sqlite:///{folder}/t.db"]


def uri(folder: Path) -> str:
    return f"sqlite:///{folder}/mlflow.db"


def test_counts_of_one_are_singular(tracked):
    folder, stderr, _ = tracked
    assert "1 trial x 2 optimizers, 1 epoch, " in stderr
    assert "1 epoch per trial." in (folder / "out" / "summary.md").read_text()
    assert "1 final seed: Welch" in (folder / "out" / "evidence.md").read_text()


def test_every_optimizers_trial_0_draws_the_same_random_numbers(tracked):
    """Common random numbers: the sampler is seeded by the experiment's seed + the trial number, so adam's and sgd's
    trial 0 try the same schedule and, their lr ranges being the same, the same learning rate."""
    import optuna

    folder = tracked[0]
    configs = [
        optuna.load_study(study_name=f"t/{name}", storage=f"sqlite:///{folder}/t.db").trials[0].user_attrs["config"]
        for name in ("adam", "sgd")
    ]
    assert configs[0]["schedule"] == configs[1]["schedule"]
    assert configs[0]["optimizer"]["kwargs"]["lr"] == configs[1]["optimizer"]["kwargs"]["lr"]
    assert configs[0]["optimizer"]["class"] != configs[1]["optimizer"]["class"]


def test_train_on_one_seed_prints_its_values_without_an_sd(tracked, capsys):
    folder = tracked[0]
    assert main(["train", str(folder / "out" / "best-adam.yaml"), "--first-seed", "1", "--seeds", "1"]) == 0
    seed, over = capsys.readouterr().out.splitlines()
    assert seed.startswith("seed 1: val accuracy ") and "±" not in over
    assert over == "over 1 seed (n = 1, no sd): " + seed.removeprefix("seed 1: ")


@pytest.mark.parametrize("experiment", [["--experiment", "t"], ["exp.yaml"]])
def test_plot_writes_the_best_configs_tuner_study_wrote(tracked, tmp_path, monkeypatch, experiment):
    folder, _, configs = tracked
    monkeypatch.chdir(folder)
    out = tmp_path / "plotted"
    assert main(["plot", *experiment, *common(folder), "--out", str(out), "--tracking-uri", uri(folder)]) == 0
    assert {p.name: p.read_text() for p in sorted(out.glob("best*.yaml"))} == configs
    source = yaml.safe_load(configs["best.yaml"])["source"]
    assert {"experiment_file", "tracking_uri", "mlflow_run_id"} <= source.keys()


def test_plot_names_no_mlflow_run_where_the_store_holds_none(tracked, tmp_path):
    folder = tracked[0]
    missing = tmp_path / "none.db"
    assert (
        main(["plot", "--experiment", "t", *common(folder), "--out", "a", "--tracking-uri", f"sqlite:///{missing}"])
        == 0
    )
    assert not missing.exists()  # looked up, not created
    assert main(["plot", "--experiment", "t", *common(folder), "--out", "b", "--no-tracking"]) == 0
    for out in ("a", "b"):
        source = yaml.safe_load(Path(out, "best.yaml").read_text())["source"]
        assert source["experiment_file"] == "exp.yaml"
        assert not {"tracking_uri", "mlflow_run_id"} & source.keys()


def test_a_storage_in_a_folder_it_cannot_write_is_read_by_plot_and_refused_by_study(tracked, tmp_path):
    """SQLite cannot make its write-ahead log's files beside a file in such a folder: plot opens it read-only (and
    the MLflow store beside it), study says so in one line. Root writes anywhere, so there the folder is a read-only
    mount of the test's own."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    for name in ("t.db", "mlflow.db"):
        shutil.copy(tracked[0] / name, folder / name)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    storage = ["--storage", f"sqlite:///{folder}/t.db"]
    plot = [sys.executable, "-m", "tuner", "plot", "--experiment", "t", *storage, "--tracking-uri", uri(folder)]
    plot += ["--out", str(tmp_path / "out")]
    study = [sys.executable, "-m", "tuner", "study", str(tracked[0] / "exp.yaml"), *storage, "--no-tracking"]
    study += ["--out", "s"]
    if os.geteuid() == 0:
        if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
            pytest.skip("running as root, and no mount namespace (unshare --mount) for a read-only folder")
        mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        runs = [
            subprocess.run(
                ["unshare", "--mount", "sh", "-c", mount, str(folder), *command],
                capture_output=True,
                text=True,
                cwd=tmp_path,
            )
            for command in (plot, study)
        ]
    else:
        folder.chmod(0o555)
        try:
            runs = [subprocess.run(command, capture_output=True, text=True, cwd=tmp_path) for command in (plot, study)]
        finally:
            folder.chmod(0o755)
    assert runs[0].returncode == 0, runs[0].stderr
    assert "mlflow_run_id" in yaml.safe_load((tmp_path / "out" / "best.yaml").read_text())["source"]
    assert runs[1].returncode == 2 and runs[1].stderr.count("\n") == 1, runs[1].stderr
    assert f"{str(folder)!r} is not writable" in runs[1].stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_an_own_tasks_report_headings_name_it_with_its_arguments(tmp_path):
    """summary.md and evidence.md name the task by its `name` and its arguments as key=value, not by its import path
    and a dict."""
    (tmp_path / "own.yaml").write_text(
        "name: own\ntask: broken_tasks:Tiny\ntask_args: {batch_size: 8}\noptimizers: [sgd]\nschedules: [constant]\n"
        "trials: 1\nepochs: 1\nseed: 0\nfinal_seeds: 1\npruner: none\n"
    )
    flags = ["--storage", f"sqlite:///{tmp_path}/t.db", "--out", str(tmp_path / "out"), "--no-tracking"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["study", str(tmp_path / "own.yaml"), *flags, "--no-progress"]) == 0
    summary, evidence = (
        (tmp_path / "out" / name).read_text().splitlines()[0] for name in ("summary.md", "evidence.md")
    )
    assert summary == "# own: which optimizer trains tiny (batch_size=8) best"
    assert evidence.endswith("measured on tiny (batch_size=8)")


def test_plot_says_in_one_line_when_the_tracking_store_cannot_be_read(tracked, capsys):
    Path("not-a-database.db").write_text("text\n")
    flags = ["--out", "a", "--tracking-uri", "sqlite:///not-a-database.db"]
    assert main(["plot", "--experiment", "t", *common(tracked[0]), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tuner: error: --tracking-uri: 'sqlite:///not-a-database.db': MLflow's runs cannot be read: ")
    assert err.count("\n") == 1 and "--no-tracking" in err


def test_the_installed_command_imports_a_task_from_the_current_folder_as_python_m_does(tmp_path):
    script = Path(sys.executable).with_name("tuner")
    if not script.exists():
        pytest.skip("tuner is not installed as a command in this environment")
    # A task module in the current folder, as the README's examples/ is in the repository's root.
    (tmp_path / "mytasks.py").write_text("from broken_tasks import Tiny\n")
    (tmp_path / "exp.yaml").write_text(
        "name: own\ntask: mytasks:Tiny\noptimizers: [sgd]\nschedules: [constant]\ntrials: 1\nepochs: 1\nseed: 0\n"
    )
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parent)}
    argv = ["exp.yaml", "--trials", "1", "--epochs", "1", "--final-seeds", "1", "--storage", "sqlite:///s.db"]
    done = subprocess.run(
        [str(script), "study", *argv, "--no-tracking", "--no-progress", "--threads", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "own" / "best.yaml").exists()


def test_a_study_of_another_storage_removes_the_best_configs_tuner_wrote_for_studies_it_does_not_report(
    tracked, tmp_path
):
    folder, _, _ = tracked
    out = tmp_path / "out"
    shutil.copytree(folder / "out", out)
    (out / "best-mine.yaml").write_text("mine: 1\n")  # not tuner's: never removed
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    stdout = io.StringIO()
    argv = ["study", str(tmp_path / "exp.yaml"), "--optimizers", "adam", "--storage", f"sqlite:///{tmp_path}/solo.db"]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert main([*argv, "--out", str(out), "--no-progress", "--no-tracking"]) == 0
    assert sorted(p.name for p in out.glob("best*.yaml")) == ["best-adam.yaml", "best-mine.yaml", "best.yaml"]
    assert "removed, of studies no longer reported here: best-sgd.yaml" in stdout.getvalue()
