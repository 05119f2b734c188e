"""The report: figure data from stored studies, the figures as PNG, summary.md, and `tuner plot`.

Most tests build studies by hand, in a real SQLite storage or in memory (no training), with
the user attributes that `tuner study` stores; one runs `tuner study` and
`tuner plot` end to end.
"""

from __future__ import annotations

import math

import matplotlib.image
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from report_setup import SETUP, TRAINING

from tuner.cli.main import main
from tuner.config.experiment import load_experiment
from tuner.config.export import config_from_dict
from tuner.measure.state_memory import state_bytes_per_parameter
from tuner.report.build import best_so_far, build_report, load_studies, trial_points
from tuner.report.data import Importance
from tuner.report.figures import FIGURES
from tuner.report.importance import MIN_IMPORTANCE_TRIALS, MIN_WEAK_IMPORTANCE_TRIALS, importance, rank_parameters
from tuner.report.summary import summary
from tuner.report.write import write_report

STATES = {
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "diverged": TrialState.PRUNED,
    "failed": TrialState.FAIL,
    "interrupted": TrialState.FAIL,
}
LR = FloatDistribution(1e-5, 1.0, log=True)
SCHEDULE = CategoricalDistribution(["constant", "cosine"])
PNG = b"\x89PNG\r\n\x1a\n"


def config(optimizer: str = "Adam", **kwargs: float) -> dict:
    """A trial's stored ``config`` attribute."""
    return {
        "format": 1,
        "optimizer": {"class": f"torch.optim.{optimizer}", "kwargs": kwargs or {"lr": 0.01, "eps": 1e-8}},
        "schedule": {"name": "constant", "interval": "step", "params": {}},
        "training": dict(TRAINING),  # a copy: a stored config is a fresh dict
    }


def trial(
    state: str, value: float | None, lr: float = 0.01, optimizer: str = "Adam", **params: object
) -> optuna.trial.FrozenTrial:
    """A finished trial as `tuner study` stores it: ``value`` is its last reported objective (NaN when diverged)."""
    kwargs = {"lr": lr} | ({"eps": 1e-8} if optimizer == "Adam" else {"momentum": 0.9})
    reported = {} if value is None else {1: value + 0.5, 3 if state == "complete" else 2: value}
    history = {
        "epoch": [1, 2, 3],
        "train_loss": [1.0] * 3,
        "val_loss": [value or 0.0] * 3,
        "val_metric": [0.5] * 3,
        "lr": [lr] * 3,
    }
    return optuna.trial.create_trial(
        state=STATES[state],
        value=value if state == "complete" else None,
        params={"lr": lr} | params,
        distributions={"lr": LR}
        | {k: SCHEDULE if isinstance(v, str) else FloatDistribution(0.0, 1.0) for k, v in params.items()},
        user_attrs={"config": config(optimizer, **kwargs), "outcome": state, "history": history},
        intermediate_values=reported,
    )


def final(trial_number: int, losses: list[list[float]]) -> dict:
    """A study's stored ``final`` attribute: one validation-loss curve per seed."""
    histories = [
        {
            "epoch": list(range(1, len(c) + 1)),
            "val_loss": c,
            "val_metric": [0.9] * len(c),
            "train_loss": c,
            "lr": [0.01] * len(c),
        }
        for c in losses
    ]
    lasts = [c[-1] for c in losses]
    return {
        "trial": trial_number,
        "seeds": list(range(1, len(losses) + 1)),
        "status": ["complete"] * len(losses),
        "val_objective": lasts,
        "val_metric": [0.9] * len(losses),
        "test_objective": lasts,
        "test_metric": [0.9] * len(losses),
        "history": histories,
    }


def add_study(
    storage: str | None,
    name: str,
    trials: list[optuna.trial.FrozenTrial],
    final_attr: dict | None = None,
    setup: dict = SETUP,
) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize")
    study.set_user_attr("setup", setup)
    study.add_trials(trials)
    if final_attr is not None:
        study.set_user_attr("final", final_attr)
    return study


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> str:
    """An experiment 'x': adam as usual, sgd with a single trial, rmsprop with no complete trial, adamw with no trial (read only)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('storage')}/t.db"
    adam = [
        trial("complete", 0.4, 1e-3),
        trial("pruned", 0.9, 0.5),
        trial("diverged", math.nan, 1.0),
        trial("complete", 0.2, 1e-2),
        trial("failed", None, 1e-4),
        trial("interrupted", None),
        trial("complete", 0.3, 3e-3),
    ]
    add_study(url, "x/adam", adam, final(3, [[0.5, 0.3, 0.2], [0.6, 0.4, 0.25]]))
    add_study(url, "x/sgd", [trial("complete", 0.35, optimizer="SGD")], final(0, [[0.5, 0.4, 0.35], [0.45, 0.4, 0.3]]))
    add_study(url, "x/rmsprop", [trial("pruned", 0.8), trial("diverged", math.nan)])
    add_study(url, "x/adamw", [])
    add_study(url, "other/adam", [])
    return url


def test_trial_points_keep_the_counted_trials_with_their_last_value(storage):
    study = optuna.load_study(study_name="x/adam", storage=storage)
    points = trial_points(study.trials)
    assert [(p.outcome, p.value) for p in points] == [
        ("complete", 0.4),
        ("pruned", 0.9),
        ("diverged", None),
        ("complete", 0.2),
        ("failed", None),
        ("complete", 0.3),
    ]
    assert [p.lr for p in points[:3]] == [1e-3, 0.5, 1.0] and points[0].eps == 1e-8
    assert best_so_far(points, "minimize") == [0.4, 0.4, 0.4, 0.2, 0.2, 0.2]
    assert best_so_far(points, "maximize") == [0.4, 0.4, 0.4, 0.4, 0.4, 0.4]
    assert math.isnan(best_so_far(trial_points(study.trials[1:3]), "minimize")[-1])


def test_the_report_of_an_experiment_with_odd_studies(storage, tmp_path):
    studies = load_studies(optuna.storages.RDBStorage(storage), "x", ["adam", "sgd", "rmsprop", "adamw"])
    report = build_report(studies)
    adam, sgd, rmsprop, adamw = report.optimizers
    # Dodge's curve over the six counted trials; the diverged and the failed one are worth the untrained model.
    untrained = report.untrained
    assert 2.0 < untrained < 2.6  # an untrained 10-class classifier: about ln 10
    assert adam.expected.n == [1, 2, 3, 4, 5, 6] and adam.expected.mean[0] == pytest.approx(
        (0.4 + 0.9 + 0.2 + 0.3 + 2 * untrained) / 6
    )
    assert sgd.expected.mean == [0.35] and sgd.cpe == 0.35
    # The default target is the least good final mean: sgd's 0.325; adam's seeds reach it at epochs 2 and 3, sgd's at 3 and never (4).
    assert report.target == pytest.approx(0.325) and not report.target_given
    assert (adam.speed.epochs, adam.speed.reached) == (2.5, 2) and (sgd.speed.epochs, sgd.speed.reached) == (3.5, 1)
    assert adam.loss.mean == pytest.approx([0.55, 0.35, 0.225]) and adam.metric.mean == pytest.approx([0.9] * 3)
    assert rmsprop.summary.final is None and rmsprop.loss is None and rmsprop.speed is None and rmsprop.memory is None
    assert rmsprop.expected.mean[0] == pytest.approx(
        (0.8 + untrained) / 2
    )  # the pruned trial's last value, the diverged one's floor
    assert adamw.points == [] and adamw.expected.n == [] and math.isnan(adamw.cpe)
    assert adam.memory == pytest.approx(8.0, abs=0.01) and sgd.memory == pytest.approx(4.0)
    assert report.winner == "adam" and report.label == "loss"
    assert all(o.importance.note and not o.importance.values for o in report.optimizers)  # too few trials: no estimate

    paths = write_report(report, tmp_path / "out")
    assert [p.name for p in paths] == ["summary.md", "evidence.md", *(f"{name}.png" for name in FIGURES)]
    for path in paths[2:]:
        assert path.read_bytes()[:8] == PNG
        assert matplotlib.image.imread(path).shape[2] in (3, 4)
    text = paths[0].read_text()
    assert "| adam *" in text and "| rmsprop" in text and "0/1/1/0" in text and "| 2.5 " in text
    assert "3.5 (1/2 seeds)" in text and "| 8.00" in text and "none in this folder" in text
    assert all(f"(plots/{name}.png)" in text for name in FIGURES)
    assert "epochs to ≤ 0.325" in text and "default: the least good" in text
    # A given target, and the best-config files that exist in the folder.
    (tmp_path / "out" / "best-sgd.yaml").write_text("format: 1\n")
    text = summary(build_report(studies[:1], target=0.3), tmp_path / "out")
    assert "epochs to ≤ 0.3 " in text and "given" in text and "[best-sgd.yaml]" not in text
    assert "[best-sgd.yaml](best-sgd.yaml)" in summary(report, tmp_path / "out")


def test_a_task_that_cannot_be_imported_leaves_the_measured_numbers_out(tmp_path):
    study = add_study(
        None,
        "y/adam",
        [trial("complete", 0.4), trial("diverged", math.nan)],
        setup=SETUP | {"task": "nosuchpkg.tasks:make"},
    )
    report = build_report([study])
    assert report.untrained is None and report.optimizers[0].memory is None
    assert report.optimizers[0].expected.mean == [0.4, 0.4]  # the diverged trial has no value and no floor: left out
    text = summary(report, tmp_path)
    assert (
        "note: state memory and untrained model not measured" in text and "nosuchpkg" in text and "are left out" in text
    )


def test_the_measured_numbers_stored_with_the_final_evaluation_are_read_not_measured(tmp_path):
    # The task cannot be built here: the numbers can only come from the study.
    stored = final(0, [[0.5, 0.45, 0.4]]) | {"state_bytes_per_param": 12.0, "untrained": {"val": 2.5, "test": 2.6}}
    study = add_study(
        None,
        "z/adam",
        [trial("complete", 0.4), trial("diverged", math.nan)],
        stored,
        setup=SETUP | {"task": "nosuchpkg.tasks:make"},
    )
    report = build_report([study])
    assert report.untrained == 2.5 and report.optimizers[0].memory == 12.0 and report.notes == []
    assert report.optimizers[0].expected.mean[0] == pytest.approx((0.4 + 2.5) / 2)  # the diverged trial at the floor


def test_one_final_seed_is_said_as_one_value_not_as_a_spread_of_zero(tmp_path):
    study = add_study(None, "s/adam", [trial("complete", 0.4)], final(0, [[0.5, 0.45, 0.4]]))
    text = summary(build_report([study]), tmp_path)
    assert "| 0.4 (1 seed)" in text and "± 0" not in text and "seed 1 only: one value, no spread" in text


def test_importance_keeps_the_conditional_parameters_and_says_when_trials_are_too_few():
    """PED-ANOVA (the default) assesses the schedule's conditional parameters; fANOVA and MDI drop them."""
    # The objective depends on lr only; the schedule's own parameter exists in half of the trials.
    trials = []
    for i in range(MIN_IMPORTANCE_TRIALS + 4):
        lr = 10 ** (-4 + 3 * i / (MIN_IMPORTANCE_TRIALS + 4))
        extra = {"schedule": "cosine", "cosine.eta_min": (i * 0.37) % 1} if i % 2 else {"schedule": "constant"}
        trials.append(trial("complete", abs(math.log10(lr) + 2.5), lr, **extra))
    study = add_study(None, "i/adam", trials)
    result = importance(study)
    assert result.note is None and result.trials == MIN_IMPORTANCE_TRIALS + 4
    assert (
        set(result.values) == {"lr", "schedule", "cosine.eta_min"} and max(result.values, key=result.values.get) == "lr"
    )
    assert sum(result.values.values()) == pytest.approx(1.0)
    for evaluator in ("fanova", "mdi"):
        assert set(importance(study, evaluator).values) == {"lr", "schedule"}
    weak = importance(add_study(None, "i/rmsprop", trials[: MIN_IMPORTANCE_TRIALS - 1]))
    assert weak.values and "weak estimate" in weak.note and str(MIN_IMPORTANCE_TRIALS) in weak.note
    few = importance(add_study(None, "i/sgd", trials[: MIN_WEAK_IMPORTANCE_TRIALS - 1]))
    assert few.values == {} and str(MIN_WEAK_IMPORTANCE_TRIALS) in few.note
    # Every panel uses one order: by total importance, most important first.
    panels = [Importance({"lr": 0.5, "eps": 0.5}, 20), Importance({"momentum": 0.7, "lr": 0.3}, 20), few]
    assert rank_parameters(panels) == ["lr", "momentum", "eps"]


def test_optimizer_state_memory_is_measured(digits):
    task, data = digits

    def measured(optimizer: str, **kwargs: float) -> float:
        return state_bytes_per_parameter(task, data, config_from_dict(config(optimizer, **kwargs)))

    assert measured("SGD", lr=0.1, momentum=0.0) == 0.0  # plain SGD keeps no state
    assert measured("SGD", lr=0.1, momentum=0.9) == 4.0  # one float32 buffer
    assert 8.0 < measured("Adam", lr=0.01) < 8.01  # two moments, plus a step count per tensor
    assert (
        12.0 < measured("RMSprop", lr=0.01, momentum=0.9, centered=True) < 12.01
    )  # square average, momentum, gradient average


def test_plot_rebuilds_the_report_of_a_study_from_the_storage_alone(tmp_path, capsys):
    db, out = f"sqlite:///{tmp_path}/t.db", tmp_path / "out"
    flags = ["--storage", db, "--out", str(out)]
    assert (
        main(
            [
                "study",
                "quickstart",
                "--optimizers",
                "sgd",
                "--trials",
                "2",
                "--epochs",
                "2",
                "--final-seeds",
                "1",
                "--no-progress",
                "--no-tracking",
                *flags,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    written = (out / "summary.md").read_text()
    assert written in printed and "[best.yaml](best.yaml)" in written and "| sgd *" in written
    for path in out.glob("plots/*.png"):
        path.unlink()
    assert main(["plot", "--experiment", "quickstart", *flags]) == 0
    assert (out / "summary.md").read_text() == written
    assert sorted(p.stem for p in out.glob("plots/*.png")) == sorted(FIGURES)


def test_plot_from_an_experiment_file_with_its_target(storage, tmp_path, capsys):
    experiment = tmp_path / "x.yaml"
    experiment.write_text(
        "name: x\ntask: digits-mlp\noptimizers: [sgd, adam]\ntrials: 1\nepochs: 3\nseed: 0\ntarget: 0.4\n"
    )
    assert (
        main(["plot", str(experiment), "--storage", storage, "--out", str(tmp_path / "out"), "--importance", "mdi"])
        == 0
    )
    text = capsys.readouterr().out
    # One output folder holds the whole experiment: every study of 'x', in the order they were created.
    assert text.index("| adam") < text.index("| sgd") < text.index("| rmsprop") < text.index("| adamw")
    assert "epochs to ≤ 0.4 " in text and "0.4; given" in text
    assert load_experiment(experiment, {"target": 0.5}).target == 0.5  # `--target` wins over the file


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["--experiment", "nosuch"], ["--experiment", "'nosuch'", "experiments there: other, x"]),
        (
            ["--experiment", "x", "--storage", "sqlite:///{tmp}/missing.db"],
            ["--storage", "missing.db", "does not exist"],
        ),
        (["quickstart", "--experiment", "x"], ["quickstart", "--experiment", "not both"]),
        (["quickstart"], ["name", "'quickstart'", "no studies", "experiments there: other, x"]),
        (["--experiment", "x", "--target", "inf"], ["--target", "'inf'", "finite"]),
        (["--experiment", "x", "--importance", "shap"], ["--importance", "'shap'", "ped-anova"]),
    ],
)
def test_plot_refuses_bad_input_with_one_line(storage, tmp_path, capsys, argv, expect):
    argv = [a.format(tmp=tmp_path) for a in argv]
    flags = ["--out", str(tmp_path / "out")] + ([] if "--storage" in argv else ["--storage", storage])
    try:
        rc = main(["plot", *argv, *flags])
    except SystemExit as exit:  # argparse's errors
        rc = exit.code
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert all(text in err for text in expect), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "missing.db").exists()
