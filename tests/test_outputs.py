"""One output folder holds the whole experiment: best.yaml, the best-<space>.yaml files, summary.md and the figures
agree after any sequence of `tuner study` (with any subset of the optimizers) and `tuner plot`, and keep the MLflow
run of each best trial (`source.mlflow_run_id`), resumes included. Real SQLite storages and MLflow stores."""

from __future__ import annotations

import json
import os
import re

import optuna
import yaml
from mlflow import MlflowClient

from tuner.cli.main import main
from tuner.report.figures import FORKED
from tuner.run import stamp
from tuner.run.outputs import Outputs, write_outputs

EXPERIMENT = """name: t
task: digits-mlp
task_args: {hidden: 16}
optimizers: [adam, sgd]
schedules: [constant]
trials: 2
epochs: 1
seed: 0
final_seeds: 1
pruner: none
"""


def winner(out) -> str:
    """The optimizer that summary.md marks with `*`."""
    marked = re.findall(r"^\| (\w+) \*", (out / "summary.md").read_text(), re.MULTILINE)
    assert len(marked) == 1, (out / "summary.md").read_text()
    return marked[0]


def rows(out) -> list[str]:
    return re.findall(r"^\| (\w+)[ *]*\|", (out / "summary.md").read_text(), re.MULTILINE)[1:]


def check_folder(out, uri: str) -> dict[str, dict]:
    """best.yaml is the summary's winner, every study has its best-<space>.yaml linked from the summary, each naming the
    MLflow run of its best trial; returns the files' contents."""
    files = {p.name: yaml.safe_load(p.read_text()) for p in sorted(out.glob("best*.yaml"))}
    assert sorted(files) == ["best-adam.yaml", "best-sgd.yaml", "best.yaml"]
    assert rows(out) == ["adam", "sgd"]
    assert files["best.yaml"] == files[f"best-{winner(out)}.yaml"]
    client = MlflowClient(uri)
    for name, data in files.items():
        run = client.get_run(data["source"]["mlflow_run_id"])
        assert run.data.tags["tuner.study"] == data["source"]["study"] and run.data.tags["tuner.trial"] == str(
            data["source"]["trial"]
        ), name
        assert f"]({name})" in (out / "summary.md").read_text()
    return files


def test_study_and_plot_in_any_order_leave_one_consistent_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    common = ["--storage", f"sqlite:///{tmp_path}/t.db", "--out", str(out)]
    study = ["study", "exp.yaml", *common, "--tracking-uri", uri, "--no-progress"]

    assert main(study) == 0
    first = check_folder(out, uri)
    # What the MLflow UI and optuna-dashboard read: a model-training experiment, and the objective's name.
    assert MlflowClient(uri).get_experiment_by_name("t").tags["mlflow.experimentKind"] == "custom_model_development"
    assert optuna.load_study(study_name="t/adam", storage=f"sqlite:///{tmp_path}/t.db").metric_names == ["val_accuracy"]

    assert main(study) == 0  # a resume that trains nothing
    assert check_folder(out, uri) == first

    # One optimizer, with a larger budget: the folder still describes both studies.
    assert main([*study, "--optimizers", "sgd", "--trials", "4"]) == 0
    after_sgd = check_folder(out, uri)
    assert after_sgd["best-adam.yaml"] == first["best-adam.yaml"]
    assert "sgd" in capsys.readouterr().out

    # plot looks the runs up where the study wrote them (the default, sqlite:///mlflow.db, is the same file spelled
    # otherwise, which the best configs would then say).
    assert main(["plot", "exp.yaml", *common, "--tracking-uri", uri]) == 0
    assert check_folder(out, uri) == after_sgd
    assert main(["plot", "--experiment", "t", *common, "--tracking-uri", uri]) == 0
    assert check_folder(out, uri) == after_sgd


def stamped_times(out) -> dict[str, int]:
    """Every file of ``out`` set to an old modification time, which a rewrite would change; by path."""
    for path in out.rglob("*"):
        os.utime(path, ns=(10**18, 10**18))
    return {str(path.relative_to(out)): path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()}


def times(out) -> dict[str, int]:
    return {str(path.relative_to(out)): path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()}


def test_a_rerun_with_nothing_to_do_leaves_the_outputs_as_they_were_and_anything_new_redraws(tmp_path, capsys):
    (tmp_path / "exp.yaml").write_text(EXPERIMENT.replace("optimizers: [adam, sgd]", "optimizers: [adam]"))
    out, storage = tmp_path / "out", f"sqlite:///{tmp_path}/t.db"
    study = [
        "study",
        str(tmp_path / "exp.yaml"),
        "--storage",
        storage,
        "--out",
        str(out),
        "--no-tracking",
        "--no-progress",
    ]
    assert main(study) == 0
    first = capsys.readouterr().out
    # The result is printed before the figures are drawn, the files after.
    assert first.index("winner:") < first.index("outputs in")

    old = stamped_times(out)
    assert "plots/budget.png" in old and "best.yaml" in old and stamp.STAMP in old
    assert main(study) == 0  # the budget is met: nothing trained, nothing redrawn
    again = capsys.readouterr().out
    assert times(out) == old
    assert "up to date, left as they were" in again
    assert again.split("outputs in")[0] == first.split("outputs in")[0]  # the same summary, evidence and winner

    (out / "plots" / "budget.png").unlink()  # a file missing: all redrawn
    assert main(study) == 0
    assert (out / "plots" / "budget.png").is_file() and times(out)["summary.md"] != old["summary.md"]

    old = stamped_times(out)
    assert main([*study, "--trials", "3"]) == 0  # a larger budget: new trials, redrawn
    assert times(out)["plots/convergence.png"] != old["plots/convergence.png"]
    assert [s["trials"] for s in json.loads((out / stamp.STAMP).read_text())["made_from"]["studies"]] == [3]

    old = stamped_times(out)
    assert main(["plot", str(tmp_path / "exp.yaml"), "--storage", storage, "--out", str(out)]) == 0  # always redraws
    assert times(out)["plots/convergence.png"] != old["plots/convergence.png"]

    # The result is known before the figures are drawn: write_outputs hands it over with the texts written, no figure.
    seen = []

    def before_figures(done: Outputs) -> None:
        seen.append((done.report.winner, done.summary, [path.exists() for path in done.report_files]))

    done = write_outputs(optuna.storages.RDBStorage(storage), "t", tmp_path / "b", before_figures=before_figures)
    (winner, summary, exist) = seen[0]
    assert winner == "adam" and summary == (tmp_path / "b" / "summary.md").read_text()[:-1]
    # summary.md and evidence.md; none of the figures this process draws (the forked child's may be under way)
    drawn_here = [path.stem not in FORKED for path in done.report_files[2:]]
    assert exist[:2] == [True, True] and not any(e and here for e, here in zip(exist[2:], drawn_here))
    assert all(path.exists() for path in done.report_files)
