"""Dataset tasks (DataLoaders seeded from the trial, augmentation repeatable with and without workers, dict batches),
tasks with their own training loop (fit), and the examples under examples/ tuned end to end."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml

from tuner.cli.main import main
from tuner.config.experiment import Config, load_experiment
from tuner.errors import UserError
from tuner.tasks.batches import python_and_numpy_seeded
from tuner.tasks.check import load_data
from tuner.tasks.contract import check_task
from tuner.tasks.loading import load_task
from tuner.tasks.task import Data
from tuner.train.loop import ReportError, Run
from tuner.train.trainer import Batches, evaluate, train

ROOT = Path(__file__).parents[1]


@pytest.fixture
def examples(monkeypatch):
    """The examples importable as ``examples.<module>``, as from the repository's root."""
    monkeypatch.syspath_prepend(str(ROOT))


class Noisy(torch.utils.data.Dataset):
    """Samples whose inputs are redrawn on every read, from torch, NumPy and Python's generators."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = [torch.rand(()).item(), np.random.rand(), random.random()]
        return torch.tensor([index, *noise], dtype=torch.float32), torch.tensor([float(index)])


def first_batches(task, data: Data, seed: int, epochs: int = 2) -> list[torch.Tensor]:
    """The inputs of the first batch of each epoch, with the global generators seeded as ``train`` seeds them."""
    with torch.random.fork_rng(), python_and_numpy_seeded(seed):
        torch.manual_seed(seed)
        feed = Batches(task, data, batch_size=4, seed=seed)
        return [next(feed.epoch())[0] for _ in range(epochs)]


@pytest.mark.parametrize("workers", [0, 2])
def test_each_epoch_draws_new_order_and_augmentation_and_the_seed_repeats_them(workers):
    task = load_task("broken_tasks:TinyDatasets")
    task.num_workers = workers
    data = Data(Noisy(), Noisy(), Noisy())
    one, again, other = first_batches(task, data, 0), first_batches(task, data, 0), first_batches(task, data, 1)
    assert not torch.equal(one[0], one[1])  # the second epoch is shuffled and augmented anew
    assert all(map(torch.equal, one, again))  # torch, NumPy and Python's generators all follow the seed
    assert not torch.equal(one[0], other[0])
    assert (
        len(set(one[0][:, 1:].flatten().tolist())) == one[0][:, 1:].numel()
    )  # workers do not repeat each other's draws


def test_the_experiments_num_workers_overrides_the_tasks_which_overrides_the_default(workdir):
    task = load_task("broken_tasks:TinyDatasets")
    cpu = torch.device("cpu")
    assert Batches(task, load_data(task, cpu), 4, 0).source.num_workers == 0  # default_workers on the CPU
    task.num_workers = 1
    assert Batches(task, load_data(task, cpu), 4, 0).source.num_workers == 1
    feed = Batches(task, load_data(task, cpu, workers=2), 4, 0)
    assert [loader.num_workers for loader in (feed.source, feed.val, feed.test)] == [2, 2, 2]

    exp = workdir / "exp.yaml"
    exp.write_text("name: w\ntask: broken_tasks:TinyDatasets\noptimizers: [sgd]\ntrials: 1\nepochs: 1\nseed: 0\n")
    assert load_experiment(exp).num_workers is None
    exp.write_text(exp.read_text() + "num_workers: 2\n")
    assert load_experiment(exp).num_workers == 2


def test_the_tasks_sampler_orders_training_and_draws_from_the_runs_generator():
    class Weighted(load_task("broken_tasks:TinyDatasets").__class__):
        def sampler(self, dataset, generator):
            weights = torch.zeros(len(dataset))
            weights[:6] = 1.0  # only the first six samples are ever drawn
            return torch.utils.data.WeightedRandomSampler(weights, num_samples=8, generator=generator)

    task, data = Weighted(), Data(Noisy(), Noisy(), Noisy())
    one, again = first_batches(task, data, 0), first_batches(task, data, 0)
    assert all(map(torch.equal, one, again))
    assert set(torch.cat(one)[:, 0].tolist()) <= set(range(6))
    assert Batches(task, data, batch_size=4, seed=0).steps == 2  # 8 samples an epoch, as the sampler says


def test_a_dataset_split_evaluates_as_the_same_tensors_in_memory():
    tensors, datasets = load_task("broken_tasks:Tiny"), load_task("broken_tasks:TinyDatasets")
    model = tensors.model()
    for name in ("val", "test"):
        assert evaluate(tensors, model, getattr(tensors.data(), name)) == pytest.approx(
            evaluate(datasets, model, getattr(datasets.data(), name))
        )


def test_training_through_dataloaders_is_repeatable_and_learns():
    task = load_task("broken_tasks:TinyDatasets")
    data = load_data(task, torch.device("cpu"))
    config = Config("Adam", {"lr": 0.05}, "cosine", {}, task.name, {}, 5, 4, 0, "loss")
    runs = [train(task, data, config, test=True) for _ in range(2)]
    assert runs[0].history == runs[1].history and runs[0].test_loss == runs[1].test_loss
    assert runs[0].history[-1].val_loss < runs[0].history[0].val_loss


def test_the_contract_covers_dataset_and_loop_tasks(examples):
    check_task("broken_tasks:TinyDatasets")
    check_task("examples.image_cnn:AugmentedDigits", {"channels": 4})
    check_task("examples.text_classifier:TextClassifier", {"train_size": 128, "width": 16})
    check_task("broken_tasks:TinyLoop")
    check_task("examples.own_loop:ClippedAccumulated", {"hidden": 16})

    class Unrepeatable(load_task("broken_tasks:TinyLoop").__class__):
        def report(self, run, epoch, train_loss, val_loss):
            return run.report(epoch, train_loss, val_loss + time.perf_counter_ns() % 1000 * 1e-9, val_loss)

    with pytest.raises(
        UserError, match="'tiny-loop' breaks the contract: two runs with the same seed differ on the CPU"
    ):
        check_task(Unrepeatable())


@pytest.mark.parametrize(
    ("experiment", "task_args", "keys"),
    [
        ("image-cnn.yaml", {"channels": 4}, {"num_workers": 2}),
        ("text-classifier.yaml", {"train_size": 96, "width": 16}, {}),
        ("own-loop.yaml", {"hidden": 16, "accumulate": 3}, {}),
    ],
)
def test_an_example_is_tuned_end_to_end_and_its_best_config_trains_again(
    experiment, task_args, keys, examples, workdir, capsys
):
    spec = yaml.safe_load((ROOT / "examples" / experiment).read_text())
    exp = workdir / experiment
    task_args = spec.get("task_args", {}) | task_args
    exp.write_text(yaml.safe_dump(spec | keys | {"task_args": task_args, "optimizers": ["adam"]}))
    argv = [
        "study",
        str(exp),
        "--trials",
        "2",
        "--epochs",
        "2",
        "--final-seeds",
        "1",
        "--population",
        "2",
        "--storage",
        f"sqlite:///{workdir}/t.db",
        "--out",
        str(workdir / "out"),
        "--no-progress",
        "--no-tracking",
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert (
        f"task {load_task(spec['task'], task_args).name!r} cannot be batched, so its trials run one at a time: " in err
    )
    summary = (workdir / "out" / "summary.md").read_text()
    adam = next(line for line in summary.splitlines() if line.startswith("| adam"))
    assert float(adam.split("|")[-2]) > 0  # state bytes/param, measured from the optimizer the task built
    best = workdir / "out" / "best-adam.yaml"
    assert yaml.safe_load(best.read_text())["training"]["task"] == spec["task"]
    assert main(["train", str(best)]) == 0
    assert "seed 0: val accuracy" in capsys.readouterr().out


def loop_config(epochs: int = 3, lr: float = 0.05) -> Config:
    return Config("SGD", {"lr": lr}, "constant", {}, "tiny-loop", {}, epochs, 4, 0, "loss")


def test_a_loop_task_is_repeatable_and_stops_when_told_or_diverged():
    task = load_task("broken_tasks:TinyLoop")
    data = load_data(task, torch.device("cpu"))
    runs = [train(task, data, loop_config(), test=True) for _ in range(2)]
    assert runs[0] == runs[1] and runs[0].status == "complete" and len(runs[0].history) == 3
    assert runs[0].history[-1].val_loss < runs[0].history[0].val_loss and runs[0].history[0].lr == 0.05
    stopped = train(task, data, loop_config(), callback=lambda metrics: metrics.epoch == 2)
    assert stopped.status == "stopped" and [m.epoch for m in stopped.history] == [1, 2] and stopped.test_loss is None
    diverged = train(task, data, loop_config(lr=1e6))
    assert diverged.status == "diverged" and "non-finite" in diverged.reason


def test_a_report_after_stop_is_refused():
    run = Run(loop_config(), torch.device("cpu"), 0, False, callback=lambda metrics: True)
    assert run.report(1, 1.0, 1.0, torch.tensor(0.5)) is True
    with pytest.raises(ReportError, match="after an earlier report said stop"):
        run.report(2, 1.0, 1.0, 1.0)


def test_a_loop_task_is_tuned_by_two_workers_with_pruning(workdir):
    exp = workdir / "exp.yaml"
    exp.write_text(
        "name: loop\ntask: broken_tasks:TinyLoop\noptimizers: [sgd]\ntrials: 4\nepochs: 3\nseed: 0\nfinal_seeds: 1\n"
        "pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}\n"
    )
    argv = [
        "study",
        str(exp),
        "--jobs",
        "2",
        "--storage",
        f"sqlite:///{workdir}/t.db",
        "--out",
        str(workdir / "out"),
        "--no-progress",
        "--no-tracking",
    ]
    assert main(argv) == 0
    trials = optuna.load_study(study_name="loop/sgd", storage=f"sqlite:///{workdir}/t.db").trials
    assert len(trials) == 4 and all(t.user_attrs["outcome"] in ("complete", "pruned", "diverged") for t in trials)
    assert (workdir / "out" / "best-sgd.yaml").exists()


@pytest.mark.parametrize(("spec", "method"), [("broken_tasks:TinyDatasets", "model"), ("broken_tasks:TinyLoop", "fit")])
def test_a_dataset_or_loop_study_resumes_after_ctrl_c_to_its_budget_and_mlflow_has_the_tensor_tasks_layout(
    spec, method, workdir, capsys, monkeypatch
):
    import test_tracking
    from test_tracking import assert_mirrors, layout, trial_runs

    # The README's per-epoch metric names for a task whose metric is mse.
    names = {"train_loss": "train_loss", "val_loss": "val_loss", "val_metric": "val_mse", "lr": "lr"}
    monkeypatch.setitem(test_tracking.EPOCH_METRICS, "mse", names)
    exp = workdir / "exp.yaml"
    exp.write_text(f"name: own\ntask: {spec}\noptimizers: [sgd]\ntrials: 4\nepochs: 2\nseed: 0\nfinal_seeds: 2\n")
    uri = f"sqlite:///{workdir}/mlflow.db"
    storage = f"sqlite:///{workdir}/t.db"
    argv = ["study", str(exp), "--storage", storage, "--out", str(workdir / "out"), "--tracking-uri", uri]
    cls = type(load_task(spec))
    original, calls = getattr(cls, method), {"n": 0}

    def interrupt_the_third_trial(self, *args):
        calls["n"] += 1
        if calls["n"] == 4:  # the first call is the task check before the study
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(cls, method, interrupt_the_third_trial)
    assert main([*argv, "--no-progress"]) == 130
    study = optuna.load_study(study_name="own/sgd", storage=storage)
    assert [t.user_attrs["outcome"] for t in study.trials] == ["complete", "complete", "interrupted"]
    parents, _ = layout(uri, "own")
    assert parents["own/sgd"].info.status == "KILLED" and not (workdir / "out").exists()

    monkeypatch.setattr(cls, method, original)
    assert main([*argv, "--no-progress"]) == 0
    study = optuna.load_study(study_name="own/sgd", storage=storage)
    outcomes = [t.user_attrs["outcome"] for t in study.trials]
    assert outcomes == ["complete", "complete", "interrupted", "complete", "complete"]  # the budget, exactly
    after = assert_mirrors(workdir, uri, "own", ["own/sgd"])
    assert after["own/sgd"].info.run_id == parents["own/sgd"].info.run_id and after["own/sgd"].info.status == "FINISHED"
    _, children = layout(uri, "own")
    exported = yaml.safe_load((workdir / "out" / "best-sgd.yaml").read_text())
    best = trial_runs(children["own/sgd"])[exported["source"]["trial"]]
    assert exported["source"]["mlflow_run_id"] == best.info.run_id
    finals = sorted(
        (r for r in children["own/sgd"] if r.data.tags["tuner.role"] == "final"),
        key=lambda r: r.data.tags["tuner.seed"],
    )
    assert [r.data.tags["tuner.seed"] for r in finals] == ["1", "2"]
    for seed, run in zip((1, 2), finals):
        assert run.info.status == "FINISHED" and run.data.params["lr"] == best.data.params["lr"]
        assert run.data.tags["tuner.trial"] == str(exported["source"]["trial"]) and run.data.params["seed"] == str(seed)
        assert run.data.metrics["test_mse"] == exported["metrics"]["final"]["test_objective"]["values"][seed - 1]
        assert any(key.startswith("step_size/") and key.endswith("/lr_p50") for key in run.data.metrics)


def test_the_step_size_hook_reaches_the_optimizer_a_loop_task_built_named_as_build_got_the_parameters(examples):
    from tuner.measure.step_sizes import probe, recorded_steps

    task = load_task("broken_tasks:TinyLoop")  # 16 training samples in batches of 4: 4 steps an epoch
    data = load_data(task, torch.device("cpu"))
    hook = probe(task, data, loop_config(epochs=2))
    train(task, data, loop_config(epochs=2), step_hook=hook)
    record = hook.result()
    assert record["tensors"] == ["param0", "param1"] and record["optimizer"] == "SGD" and record["defined"]
    assert record["steps"] == sorted(recorded_steps(4, 2, 1))
    assert record["effective_lr"]["param0"][0][2] == pytest.approx(0.05)  # SGD: η is the learning rate

    task = load_task("examples.own_loop:ClippedAccumulated", {"hidden": 8})  # builds from model.named_parameters()
    data = load_data(task, torch.device("cpu"))
    config = Config("Adam", {"lr": 1e-3}, "constant", {}, task.name, {}, 1, 32, 0, "loss")
    hook = probe(task, data, config)
    train(task, data, config, step_hook=hook)
    assert hook.result()["tensors"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
