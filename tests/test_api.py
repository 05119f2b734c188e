"""The Python API takes the CLI's path: an experiment from a file or an object, its best configs, summary and trials."""

from __future__ import annotations

import pandas

import tuner
from tuner.config.experiment import Config, find_experiment, load_experiment


def test_run_experiment_returns_best_configs_summaries_and_the_trials_as_a_dataframe(workdir, capsys):
    # out as a str, as a notebook writes it
    options = {
        "storage": f"sqlite:///{workdir}/t.db",
        "out": str(workdir / "out"),
        "no_tracking": True,
        "no_progress": True,
    }
    result = tuner.run_experiment(
        "quickstart", optimizers=["sgd", "adam"], trials=3, epochs=2, final_seeds=1, **options
    )
    assert sorted(result.best) == ["adam", "sgd"] and result.winner in result.best
    for name, config in result.best.items():
        assert isinstance(config, Config) and config == tuner.load_config(workdir / "out" / f"best-{name}.yaml")
    assert [s.optimizer for s in result.summaries] == ["sgd", "adam"]
    assert isinstance(result.trials, pandas.DataFrame) and len(result.trials) == 6
    assert sorted(result.trials["optimizer"]) == ["adam"] * 3 + ["sgd"] * 3
    # The objective's column is named by the study's metric name, as optuna-dashboard shows it.
    assert {"number", "value_val_loss", "state", "params_lr", "user_attrs_outcome"} <= set(result.trials.columns)
    assert (workdir / "out" / "summary.md") in result.files
    assert "winner:" in capsys.readouterr().out  # by default it prints what `tuner study` prints

    # The same experiment as an object resumes the same studies: nothing more is trained, the same best configs.
    experiment = load_experiment(
        find_experiment("quickstart"), {"optimizers": ["sgd", "adam"], "trials": 3, "epochs": 2, "final_seeds": 1}
    )
    again = tuner.run_experiment(experiment, quiet=True, **options)
    assert again.best == result.best and len(again.trials) == 6
    assert capsys.readouterr().out == ""  # quiet: nothing went wrong, nothing printed
    # A short repr: the winner, each optimizer's best value, the trial count.
    assert repr(again).startswith(f"Result(winner={again.winner!r}, best values {{sgd: ") and "6 trials" in repr(again)
    assert len(repr(again)) < 200
