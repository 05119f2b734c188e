"""Sampled params -> exported YAML -> load_config().build() gives the objects the trial built."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch

import tuner
from tuner.config.experiment import Config
from tuner.config.export import config_from_dict, config_to_dict, write_config
from tuner.config.files import shipped_dir
from tuner.config.spaces import load_schedules, load_space
from tuner.study import spaces
from tuner.train import optim

SPACES = ["adam", "adamw", "sgd", "rmsprop", "nadam", "radam", "adagrad", "adamax", "adam-wide", "nadam-wide"]
SCHEDULES = list(optim.SCHEDULES)
STEPS_PER_EPOCH = 7
EPOCHS = 5


def sampled_config(space_name: str, schedule: str, seed: int) -> Config:
    space = load_space(shipped_dir("search_spaces") / f"{space_name}.yaml")
    schedules = load_schedules(shipped_dir("search_spaces") / "schedules.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    study.enqueue_trial({"schedule": schedule})
    trial = study.ask()
    name, params = spaces.sample_schedule(trial, schedules)
    assert name == schedule
    return Config(space.optimizer, spaces.sample_optimizer(trial, space), name, params, "digits-mlp", {}, EPOCHS, 32, 0)


def lr_sequence(config: Config, steps_per_epoch: int = STEPS_PER_EPOCH) -> list[float]:
    """The learning rate of every step of a run of ``config``."""
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer, scheduler = config.build(params, steps_per_epoch=steps_per_epoch)
    lrs = []
    for _ in range(config.epochs * steps_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return lrs


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("space_name", SPACES)
def test_yaml_round_trip_rebuilds_the_same_optimizer_and_lr_sequence(tmp_path, space_name, schedule):
    config = sampled_config(space_name, schedule, seed=len(space_name) + len(schedule))
    path = tmp_path / "best.yaml"
    write_config(dataclasses.replace(config, metrics={"val": 0.5}, source={"trial": 3}), path)
    loaded = tuner.load_config(path)

    assert loaded == config
    assert loaded.metrics == {"val": 0.5} and loaded.source == {"trial": 3}
    params = [torch.nn.Parameter(torch.zeros(3))]
    trial_optimizer, trial_scheduler = config.build(params, steps_per_epoch=STEPS_PER_EPOCH)
    loaded_optimizer, loaded_scheduler = loaded.build(params, steps_per_epoch=STEPS_PER_EPOCH)
    assert type(loaded_optimizer) is type(trial_optimizer) is optim.OPTIMIZERS[config.optimizer]
    assert loaded_optimizer.defaults == trial_optimizer.defaults
    assert type(loaded_scheduler) is type(trial_scheduler)
    assert (schedule == "constant") == (loaded_scheduler is None)
    sequence = lr_sequence(loaded)
    assert sequence == lr_sequence(config)
    if schedule != "constant":
        assert len(set(sequence)) > 1


def test_exported_kwargs_are_torch_kwargs():
    config = sampled_config("adam", "cosine", seed=1)
    data = config_to_dict(config)
    assert data["format"] == 1
    assert data["optimizer"]["class"] == "torch.optim.Adam"
    kwargs = data["optimizer"]["kwargs"]
    assert set(kwargs) == {"lr", "betas", "eps", "weight_decay"}
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], **kwargs)
    assert optimizer.defaults["betas"] == config.optimizer_kwargs["betas"]
    assert 0.0 <= kwargs["betas"][0] < 1.0 and 0.9 <= kwargs["betas"][1] < 1.0


def test_json_round_trip_of_trial_user_attrs():
    import json

    config = sampled_config("rmsprop", "one_cycle", seed=2)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config


def test_schedule_mappings_follow_the_documented_table():
    base = Config("SGD", {"lr": 1.0}, "constant", {}, "digits-mlp", {}, 2, 10, 0)
    total = 2 * 10
    params = [torch.nn.Parameter(torch.zeros(1))]

    _, step = dataclasses.replace(base, schedule="step", schedule_params={"step_size": 0.25, "gamma": 0.5}).build(
        params, steps_per_epoch=10
    )
    assert step.step_size == 5 and step.gamma == 0.5

    _, exponential = dataclasses.replace(base, schedule="exponential", schedule_params={"end_factor": 0.01}).build(
        params, steps_per_epoch=10
    )
    assert exponential.gamma**total == pytest.approx(0.01)

    _, warmup = dataclasses.replace(base, schedule="warmup_cosine", schedule_params={"warmup": 0.1}).build(
        params, steps_per_epoch=10
    )
    assert warmup._milestones == [2]

    optimizer, one_cycle = dataclasses.replace(base, schedule="one_cycle", schedule_params={"pct_start": 0.3}).build(
        params, steps_per_epoch=10
    )
    assert one_cycle.total_steps == total
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0 / 25.0)


def test_one_cycle_keeps_the_searched_momentum():
    config = Config("SGD", {"lr": 0.1, "momentum": 0.7}, "one_cycle", {"pct_start": 0.3}, "digits-mlp", {}, 2, 10, 0)
    optimizer, scheduler = config.build([torch.nn.Parameter(torch.zeros(1))], steps_per_epoch=10)
    for _ in range(20):
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["momentum"] == 0.7


def test_build_rejects_a_bad_steps_per_epoch():
    config = sampled_config("sgd", "constant", seed=0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        config.build([torch.nn.Parameter(torch.zeros(1))], steps_per_epoch=0)


def test_the_exported_yaml_rebuilds_the_lr_history_a_real_trial_stored(tmp_path):
    from tuner.cli.main import main
    from tuner.tasks.loading import load_task
    from tuner.train.trainer import steps_per_epoch

    (tmp_path / "exp.yaml").write_text(
        "name: lrs\ntask: digits-mlp\noptimizers: [adam]\nschedules: [cosine, warmup_cosine]\n"
        "trials: 4\nepochs: 4\nseed: 0\nsampler: random\npruner: none\nfinal_seeds: 1\n"
    )
    storage = f"sqlite:///{tmp_path}/t.db"
    argv = [
        "study",
        str(tmp_path / "exp.yaml"),
        "--storage",
        storage,
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
        "--no-tracking",
    ]
    assert main(argv) == 0
    trials = optuna.load_study(study_name="lrs/adam", storage=storage).trials
    assert {t.params["schedule"] for t in trials} == {"cosine", "warmup_cosine"}
    steps = steps_per_epoch(len(load_task("digits-mlp").data().train.x), 64)
    best = tuner.load_config(tmp_path / "out" / "best-adam.yaml")
    for trial in trials:
        path = tmp_path / f"trial-{trial.number}.yaml"
        write_config(config_from_dict(trial.user_attrs["config"]), path)
        loaded = tuner.load_config(path)
        if trial.number == best.source["trial"]:
            assert loaded == best
        sequence = lr_sequence(loaded, steps)
        # The stored lr of an epoch is that of its last step.
        assert [sequence[epoch * steps - 1] for epoch in trial.user_attrs["history"]["epoch"]] == trial.user_attrs[
            "history"
        ]["lr"]
