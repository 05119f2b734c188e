"""`tuner evidence`: one evidence.md over the stored studies of several experiments, from small real studies."""

from __future__ import annotations

import optuna

from tuner.cli.main import main
from tuner.report.evidence import CLAIMS


def test_one_evidence_report_over_two_experiments_names_each_cells_task(tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/t.db"
    for experiment in ("evidence-drift", "evidence-logistic"):  # the two quick tasks of the three
        flags = ["--trials", "1", "--epochs", "1", "--final-seeds", "1", "--optimizers", "adam", "sgd"]
        out = ["--out", str(tmp_path / experiment), "--storage", db, "--no-tracking", "--no-progress"]
        assert main(["study", experiment, *flags, *out]) == 0
    capsys.readouterr()
    out = tmp_path / "combined"
    assert main(["evidence", "evidence-drift", "evidence-logistic", "--storage", db, "--out", str(out)]) == 0
    text = (out / "evidence.md").read_text()
    assert capsys.readouterr().out.startswith(text)
    # By their names in the storage, as tuner plot takes one: the same table.
    by_name = ["evidence", "--experiment", "evidence-drift", "evidence-logistic", "--storage", db, "--out", str(out)]
    assert main(by_name) == 0 and (out / "evidence.md").read_text() == text
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:-1]
        for line in text.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    assert list(rows)[1:] == list(CLAIMS)
    for claim, cells in list(rows.items())[1:]:
        for cell in cells:
            drift, convex = cell.strip().split("<br>")
            assert drift.startswith("drifting-regression: ") and convex.startswith("logistic-regression: "), claim
    adam, sgd = rows["suited to"]
    assert "drifting-regression: final val loss" in adam and "(this task is a non-stationary problem)" in adam
    assert "logistic-regression: final val loss" in sgd and "claim: simple models" in sgd
    # The CPU peak memory of the first step, measured with the final runs, beside the state bytes (a few pages at most
    # for this linear model of a few parameters: it may round to none).
    study = optuna.load_study(study_name="evidence-drift/adam", storage=db)
    assert study.user_attrs["final"]["peak_step_bytes"] >= 0
    assert all("first step's peak" in cell for cell in rows["memory"])


def test_an_experiment_missing_from_the_storage_is_one_line_and_writes_nothing(tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/t.db"
    flags = ["--trials", "1", "--epochs", "1", "--final-seeds", "1", "--optimizers", "sgd", "--no-tracking"]
    assert (
        main(["study", "evidence-logistic", *flags, "--storage", db, "--out", str(tmp_path / "l"), "--no-progress"])
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "combined"
    assert main(["evidence", "evidence-logistic", "evidence-drift", "--storage", db, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "evidence-drift" in error and "has no studies" in error
    assert not out.exists()
    assert main(["evidence", "evidence-logistic", "evidence-logistic", "--storage", db, "--out", str(out)]) == 2
    assert "given twice" in capsys.readouterr().err and not out.exists()
    for argv, expect in [
        (
            ["--experiment", "evidence-logistic", "evidence-drift"],
            ["--experiment", "'evidence-drift'", "has no studies"],
        ),
        (["--experiment", "evidence-logistic", "evidence-logistic"], ["'evidence-logistic'", "given twice"]),
        (["evidence-logistic", "--experiment", "evidence-drift"], ["--experiment", "file", "give one, not both"]),
        ([], ["experiment: missing", "--experiment NAME"]),
    ]:
        assert main(["evidence", *argv, "--storage", db, "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("tuner: error: ") and not out.exists()
        assert all(text in error for text in expect), error
