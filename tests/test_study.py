"""End to end: `tuner study` on both built-in tasks, resume and top-up, divergence, reuse of the YAML."""

from __future__ import annotations

import math
import subprocess
import sys

import optuna
import pytest
import yaml
from mlflow import MlflowClient

import tuner
from tuner.cli.main import main
from tuner.config.files import shipped_dir
from tuner.report.statistics import mean_sd, pm
from tuner.study.outcomes import counts, finished, outcome

FAST = ["--epochs", "2", "--final-seeds", "2", "--no-progress", "--no-tracking"]


def study_args(tmp_path, *extra: str) -> list[str]:
    return ["study", *extra, "--storage", f"sqlite:///{tmp_path}/t.db", "--out", str(tmp_path / "out"), *FAST]


def load(tmp_path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/t.db")


@pytest.mark.parametrize(("experiment", "task"), [("quickstart", "digits-mlp"), ("quadratic-deep", "quadratic-deep")])
def test_study_end_to_end_on_each_shipped_experiment(workdir, capsys, experiment, task):
    assert main(study_args(workdir, experiment, "--trials", "3")) == 0
    out = capsys.readouterr().out
    for name in ("adam", "sgd", "rmsprop"):
        study = load(workdir, f"{experiment}/{name}")
        assert finished(study) == 3
        assert name in out
        config = tuner.load_config(workdir / "out" / f"best-{name}.yaml")
        best = study.best_trial
        assert config.source["trial"] == best.number and config.source["study"] == f"{experiment}/{name}"
        assert config.metrics["tuning"]["val_objective"] == best.value
        final = config.metrics["final"]
        assert final["seeds"] == [1, 2] and len(final["val_objective"]["values"]) == 2
        assert all(
            math.isfinite(final[k]["mean"]) for k in ("val_objective", "test_objective", "val_metric", "test_metric")
        )
        for trial in study.trials:  # the whole learning curve is stored with each trial
            history = trial.user_attrs["history"]
            assert history["epoch"] == sorted(trial.intermediate_values)
            assert history["val_loss"] == [trial.intermediate_values[e] for e in history["epoch"]]
            assert set(history) == {"epoch", "train_loss", "val_loss", "val_metric", "lr", "seconds"}
    best = yaml.safe_load((workdir / "out" / "best.yaml").read_text())
    assert best["format"] == 1 and best["training"]["task"] == task and best["training"]["epochs"] == 2
    assert "final test (mean ± sd)" in out and "winner:" in out


def test_resume_keeps_finished_trials_and_tops_up_to_the_budget(workdir, capsys):
    args = study_args(workdir, "quickstart", "--optimizers", "sgd")
    assert main([*args, "--trials", "3"]) == 0
    study = load(workdir, "quickstart/sgd")
    first = [(t.number, t.params, t.value) for t in study.trials]
    assert len(first) == 3

    assert main([*args, "--trials", "3"]) == 0
    study = load(workdir, "quickstart/sgd")
    assert [(t.number, t.params, t.value) for t in study.trials] == first

    assert main([*args, "--trials", "5"]) == 0
    study = load(workdir, "quickstart/sgd")
    assert finished(study) == 5 and len(study.trials) == 5
    assert [(t.number, t.params, t.value) for t in study.trials[:3]] == first
    assert main([*args, "--trials", "2"]) == 0  # never beyond, never fewer
    assert len(load(workdir, "quickstart/sgd").trials) == 5


def test_ctrl_c_marks_the_trial_interrupted_exits_130_and_the_rerun_redoes_it(workdir, capsys, monkeypatch):
    from tuner.tasks.digits import DigitsMLP

    args = study_args(workdir, "quickstart", "--optimizers", "sgd", "--trials", "3")
    calls = {"n": 0}
    original = DigitsMLP.model

    def interrupt_the_third(self):
        calls["n"] += 1
        if calls["n"] == 4:  # the first call is the task check before the study
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(DigitsMLP, "model", interrupt_the_third)
    assert main(args) == 130
    assert "run the same command to resume" in capsys.readouterr().err
    study = load(workdir, "quickstart/sgd")
    assert [outcome(t) for t in study.trials] == ["complete", "complete", "interrupted"]
    assert finished(study) == 2 and not (workdir / "out").exists()

    assert main(args) == 0
    study = load(workdir, "quickstart/sgd")
    assert finished(study) == 3 and counts(study)["interrupted"] == 1


def test_resume_with_another_setup_is_refused_for_every_change_the_readme_lists(workdir, capsys):
    space = yaml.safe_load((shipped_dir("search_spaces") / "sgd.yaml").read_text())
    (workdir / "sgd.yaml").write_text(yaml.safe_dump(space))
    # The same file name, so the same study, in another folder: another range of lr.
    (workdir / "narrower").mkdir()
    (workdir / "narrower" / "sgd.yaml").write_text(
        yaml.safe_dump(space | {"params": space["params"] | {"lr": {"low": 1.0e-5, "high": 0.5, "scale": "log"}}})
    )
    base = {
        "name": "r",
        "task": "digits-mlp",
        "optimizers": ["sgd.yaml"],
        "trials": 1,
        "epochs": 2,
        "batch_size": 64,
        "seed": 0,
        "objective": "loss",
        "final_seeds": 1,
    }
    exp = workdir / "exp.yaml"
    args = [
        "study",
        str(exp),
        "--storage",
        f"sqlite:///{workdir}/t.db",
        "--out",
        str(workdir / "out"),
        "--no-progress",
        "--no-tracking",
    ]
    exp.write_text(yaml.safe_dump(base))
    assert main(args) == 0
    capsys.readouterr()
    files = {path: path.read_bytes() for path in workdir.rglob("*") if path.is_file() and path.suffix != ".yaml"}
    changes = [
        ({"task": "quadratic-deep"}, "task='digits-mlp' -> 'quadratic-deep'"),
        ({"task_args": {"hidden": 32}}, "task_args={} -> {'hidden': 32}"),
        ({"epochs": 3}, "epochs=2 -> 3"),
        ({"batch_size": 32}, "batch_size=64 -> 32"),
        ({"seed": 1}, "seed=0 -> 1"),
        ({"objective": "metric"}, "objective='loss' -> 'metric'"),
        ({"optimizers": ["narrower/sgd.yaml"]}, "space changed"),
    ]
    for change, expect in changes:
        exp.write_text(yaml.safe_dump(base | change))
        assert main([*args, "--trials", "2"]) == 2, change
        err = capsys.readouterr().err.strip()
        assert (
            len(err.splitlines()) == 1
            and "study 'r/sgd'" in err
            and "was run with another setup" in err
            and expect in err
        ), err
        now = {path: path.read_bytes() for path in workdir.rglob("*") if path.is_file() and path.suffix != ".yaml"}
        assert now == files, f"the refused run ({change}) changed a file or the database"
    assert len(load(workdir, "r/sgd").trials) == 1


def test_resume_with_another_search_space_is_refused(workdir, capsys):
    exp = workdir / "exp.yaml"
    base = "name: s\ntask: digits-mlp\noptimizers: [sgd]\ntrials: 1\nepochs: 1\nseed: 0\nfinal_seeds: 1\n"
    args = [
        "study",
        str(exp),
        "--storage",
        f"sqlite:///{workdir}/t.db",
        "--out",
        str(workdir / "out"),
        "--no-progress",
        "--no-tracking",
    ]
    exp.write_text(base + "schedules: [constant, cosine]\n")
    assert main(args) == 0
    capsys.readouterr()
    exp.write_text(base + "schedules: [constant, cosine, step]\n")
    assert main([*args, "--trials", "2"]) == 2
    assert "schedules changed" in capsys.readouterr().err
    assert len(load(workdir, "s/sgd").trials) == 1


def test_the_last_epoch_is_never_pruned(workdir, capsys):
    exp = workdir / "exp.yaml"
    exp.write_text(
        "name: p\ntask: quadratic-deep\noptimizers: [sgd]\ntrials: 12\nepochs: 2\nseed: 0\n"
        "pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}\nfinal_seeds: 1\n"
    )
    assert (
        main(
            [
                "study",
                str(exp),
                "--storage",
                f"sqlite:///{workdir}/t.db",
                "--out",
                str(workdir / "out"),
                "--no-progress",
                "--no-tracking",
            ]
        )
        == 0
    )
    pruned = [t for t in load(workdir, "p/sgd").trials if outcome(t) == "pruned"]
    assert pruned and all(max(t.intermediate_values) == 1 for t in pruned)


def test_same_seed_same_study(tmp_path, monkeypatch):
    results = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        monkeypatch.chdir(tmp_path / run)
        assert main(study_args(tmp_path / run, "quickstart", "--optimizers", "adam", "--trials", "4")) == 0
        study = load(tmp_path / run, "quickstart/adam")
        results.append([(t.params, t.value, t.intermediate_values) for t in study.trials])
    assert results[0] == results[1]


def test_tuner_train_reproduces_the_trial_and_the_final_seeds_bit_for_bit(workdir, capsys, monkeypatch):
    import tuner.train.trainer
    from tuner.train.results import columns

    assert main(study_args(workdir, "quickstart", "--optimizers", "rmsprop", "--trials", "3")) == 0
    study = load(workdir, "quickstart/rmsprop")
    best, final = study.best_trial, study.user_attrs["final"]
    assert final["trial"] == best.number and final["seeds"] == [1, 2]
    # What `tuner train` computes, seed by seed: the real trainer's results, recorded on their way to the printout.
    runs, real = {}, tuner.train.trainer.train
    monkeypatch.setattr(
        tuner.train.trainer,
        "train",
        lambda *args, seed, **kwargs: runs.setdefault(seed, real(*args, seed=seed, **kwargs)),
    )
    capsys.readouterr()
    assert main(["train", str(workdir / "out" / "best.yaml"), "--seeds", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(runs) == [0, 1, 2] and len(out) == 4

    def values(curve: dict[str, list[float]]) -> dict[str, list[float]]:
        return {k: v for k, v in curve.items() if k != "seconds"}

    curves = {seed: values(columns(run.history)) for seed, run in runs.items()}
    # Seed 0 is the trial's own: every epoch's every value, to the bit.
    assert curves[0] == values(best.user_attrs["history"])
    assert runs[0].history[-1].val_loss == best.value and out[0].startswith(f"seed 0: val loss {best.value:.6g}, ")
    # Seeds 1 and 2 are the final evaluation's.
    for i, seed in enumerate(final["seeds"]):
        assert curves[seed] == values(final["history"][i])
        assert (runs[seed].history[-1].val_loss, runs[seed].test_loss, runs[seed].test_metric) == (
            final["val_objective"][i],
            final["test_objective"][i],
            final["test_metric"][i],
        )
        assert f"test loss {final['test_objective'][i]:.6g}, " in out[seed]
        assert out[seed].endswith(f"test accuracy {final['test_metric'][i]:.6g}")
    assert out[3].startswith("mean ± sd over 3 seeds: val loss ")
    # On the final seeds, the figures of tuner study's summary: val and test, mean ± sd (the runs are recorded).
    assert main(["train", str(workdir / "out" / "best.yaml"), "--first-seed", "1", "--seeds", "2"]) == 0
    shown = ", ".join(
        f"{split} {name} {pm(mean_sd(final[f'{split}_{key}']), 6)}"
        for name, key in (("loss", "objective"), ("accuracy", "metric"))
        for split in ("val", "test")
    )
    assert capsys.readouterr().out.splitlines()[-1] == f"mean ± sd over 2 seeds: {shown}"


def divergent_space(tmp_path):
    path = tmp_path / "hot-sgd.yaml"
    path.write_text("optimizer: SGD\nparams:\n  lr: {low: 100.0, high: 1000.0, scale: log}\n")
    return path


def test_diverged_trials_are_recorded_with_their_reason(workdir, capsys):
    space = divergent_space(workdir)
    assert main(study_args(workdir, "quadratic-deep", "--optimizers", str(space), "--trials", "3")) == 0
    study = load(workdir, "quadratic-deep/hot-sgd")
    assert counts(study)["diverged"] == 3 and finished(study) == 3
    for trial in study.trials:
        # PRUNED with a NaN at the diverged epoch: TPE ranks it below every finished trial.
        assert trial.state == optuna.trial.TrialState.PRUNED
        epoch = max(trial.intermediate_values)
        assert math.isnan(trial.intermediate_values[epoch])
        assert trial.user_attrs["reason"].startswith(f"diverged at epoch {epoch}")
    captured = capsys.readouterr()
    assert "0/0/3/0" in captured.out and "none (no trial completed)" in captured.out


def test_a_trial_whose_task_code_raises_fails_and_the_study_goes_on(workdir, capsys, monkeypatch):
    from tuner.tasks.digits import DigitsMLP

    calls = {"n": 0}
    original = DigitsMLP.model

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom in user code")
        return original(self)

    monkeypatch.setattr(DigitsMLP, "model", flaky)
    assert main(study_args(workdir, "quickstart", "--optimizers", "adam", "--trials", "3")) == 0
    study = load(workdir, "quickstart/adam")
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["reason"] == "RuntimeError: boom in user code"
    assert "Traceback" in failed[0].user_attrs["traceback"]
    assert finished(study) == 3


@pytest.mark.parametrize("population", ["1", "4"])
def test_a_study_whose_every_trial_fails_the_same_way_stops_with_that_error(workdir, capsys, monkeypatch, population):
    import broken_tasks

    (workdir / "exp.yaml").write_text(
        "name: broken\ntask: broken_tasks:FailsInTraining\noptimizers: [adam, sgd]\ntrials: 20\nepochs: 2\nseed: 0\n"
    )
    args = ["study", "exp.yaml", "--storage", f"sqlite:///{workdir}/t.db", "--no-progress", "--population", population]
    assert main([*args, "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"]) == 2
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("broken").experiment_id], "tags.`tuner.role` = 'study'"
    )
    assert parent.info.status == "FAILED"
    args.append("--no-tracking")
    err = capsys.readouterr().err
    last = err.splitlines()[-1]  # after the experiment's header line
    assert "Traceback" not in err and last.startswith("tuner: error: study 'broken/adam': all ")
    assert "failed the same way" in last and "ValueError: score() takes at most 8 samples, got 16" in last
    trials = load(workdir, "broken/adam").trials
    assert 3 <= len(trials) <= 3 + int(population), "the budget of 20 was spent"
    assert all(outcome(t) == "failed" and "Traceback" in t.user_attrs["traceback"] for t in trials)
    assert "broken/sgd" not in optuna.get_all_study_names(f"sqlite:///{workdir}/t.db")
    # Still broken: one more trial, then the same stop. Fixed: the study goes on, the failed trials counted.
    assert main(args) == 2
    assert len(load(workdir, "broken/adam").trials) == len(trials) + int(population)
    monkeypatch.setattr(broken_tasks.FailsInTraining, "score", broken_tasks.Tiny.score)
    assert main(args) == 0
    assert finished(load(workdir, "broken/adam")) == finished(load(workdir, "broken/sgd")) == 20


def test_tasks_lists_the_built_ins(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digits-mlp") and "quadratic-deep" in out
    # A docstring's first paragraph, whole, on one line: quadratic-deep's wraps after "10 large".
    (line,) = [line for line in out.splitlines() if line.startswith("quadratic-deep ")]
    assert line.endswith("Q with 90 small and 10 large eigenvalues.")


def test_help_does_not_import_the_heavy_libraries():
    code = "import sys; from tuner.cli.arguments import build_parser; build_parser().format_help(); print(sorted({'torch', 'optuna', 'mlflow', 'sklearn'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("sampler", "pruner", "objective"),
    [("random", "hyperband", "metric"), ("qmc", "none", "loss"), ("tpe", "median", "metric")],
)
def test_every_sampler_and_pruner_runs_and_resumes(workdir, capsys, sampler, pruner, objective):
    exp = workdir / "exp.yaml"
    exp.write_text(
        f"name: combo\ntask: digits-mlp\noptimizers: [adam]\nschedules: [constant, step]\ntrials: 4\nepochs: 6\n"
        f"seed: 0\nsampler: {sampler}\npruner: {pruner}\nobjective: {objective}\nfinal_seeds: 1\n"
    )
    args = [
        "study",
        str(exp),
        "--storage",
        f"sqlite:///{workdir}/t.db",
        "--out",
        str(workdir / "out"),
        "--no-progress",
        "--no-tracking",
    ]
    assert main(args) == 0
    study = load(workdir, "combo/adam")
    direction = optuna.study.StudyDirection.MAXIMIZE if objective == "metric" else optuna.study.StudyDirection.MINIMIZE
    assert study.direction == direction and finished(study) == 4
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)
    if pruner == "hyperband":  # its rung bookkeeping reaches the storage with the trial
        assert any(k.startswith("completed_rung_") for t in study.trials for k in t.system_attrs)
    assert main([*args, "--trials", "6"]) == 0
    study = load(workdir, "combo/adam")
    assert finished(study) == 6 and len({tuple(sorted(t.params.items())) for t in study.trials}) == 6
    config = tuner.load_config(workdir / "out" / "best.yaml")
    assert config.metrics["direction"] == direction.name.lower()
    assert config.metrics["objective"] == ("accuracy" if objective == "metric" else "loss")


def test_tpe_learns_to_avoid_the_region_that_diverges(workdir, capsys):
    # SGD on the quadratic diverges for lr above ~2/60: about 70% of this log range.
    (workdir / "hot.yaml").write_text("optimizer: SGD\nparams:\n  lr: {low: 1.0e-3, high: 100.0, scale: log}\n")
    exp = workdir / "exp.yaml"
    exp.write_text(
        "name: learn\ntask: quadratic-deep\noptimizers: [hot.yaml]\nschedules: [constant]\ntrials: 24\n"
        "epochs: 2\nseed: 0\nsampler: {name: tpe, n_startup_trials: 6}\npruner: none\nfinal_seeds: 1\n"
    )
    assert (
        main(
            [
                "study",
                str(exp),
                "--storage",
                f"sqlite:///{workdir}/t.db",
                "--out",
                str(workdir / "out"),
                "--no-progress",
                "--no-tracking",
            ]
        )
        == 0
    )
    outcomes = [outcome(t) for t in load(workdir, "learn/hot").trials]
    startup, learned = outcomes[:6], outcomes[6:]
    assert startup.count("diverged") >= 3
    assert learned.count("diverged") <= len(learned) // 4
