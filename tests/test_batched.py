"""Batched trials: vectorized optimizers equal torch.optim bit for bit, members are independent, and
`tuner study --population K` keeps every contract of one-at-a-time trials (budget, resume, outcomes)."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from collections.abc import Callable

import optuna
import pytest
import torch

from tuner.batched import memory, stackable
from tuner.batched.memory import population_that_fits
from tuner.batched.model import StackedModel, seeded_model
from tuner.batched.optimizers import VECTORIZED
from tuner.batched.trainer import _Population, train_batched
from tuner.cli.main import main
from tuner.config.experiment import Config
from tuner.study.budget import TICKETS_PREFIX
from tuner.study.outcomes import counts, finished, outcome
from tuner.tasks.check import load_data
from tuner.tasks.loading import BUILTIN, load_task
from tuner.train.trainer import train

# Training amplifies rounding: a batched learning curve follows the same config trained alone within this
# relative difference over a few epochs of a config that trains stably (measured: 1e-7 to 1e-5; see README).
CURVE_RTOL = 1e-4
# The same under bf16 autocast, whose products keep 8 bits of mantissa (measured on the CPU: up to 1.5e-3 over 2 epochs).
BF16_RTOL = 1e-2
STEPS_PER_EPOCH, EPOCHS = 10, 6
SHAPES = [(16, 8), (16,), (3, 16), (3,), (2, 3, 5)]


def config(
    optimizer: str,
    kwargs: dict,
    schedule: str = "constant",
    params: dict | None = None,
    *,
    task: str = "digits-mlp",
    epochs: int = EPOCHS,
    batch_size: int = 64,
    seed: int = 0,
) -> Config:
    return Config(optimizer, kwargs, schedule, params or {}, task, {}, epochs, batch_size, seed, "loss")


# Different hyperparameters, torch's branches and schedules per member.
MEMBERS = {
    "Adam": [
        config("Adam", {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8}, "cosine"),
        config(
            "Adam",
            {"lr": 3e-3, "betas": (0.5, 0.99), "eps": 1e-3, "weight_decay": 0.1},
            "warmup_cosine",
            {"warmup": 0.2},
        ),
        config("Adam", {"lr": 1e-1, "betas": (0.0, 0.9), "eps": 1.0, "amsgrad": True}, "one_cycle", {"pct_start": 0.3}),
        config(
            "Adam",
            {"lr": 1e-2, "betas": (0.95, 0.9999), "eps": 1e-10, "weight_decay": 0.05, "decoupled_weight_decay": True},
            "step",
            {"step_size": 0.2, "gamma": 0.5},
        ),
    ],
    "AdamW": [
        config("AdamW", {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}, "cosine"),
        config(
            "AdamW",
            {"lr": 3e-3, "betas": (0.5, 0.99), "eps": 1e-3, "weight_decay": 0.0},
            "exponential",
            {"end_factor": 0.01},
        ),
        config("AdamW", {"lr": 1e-1, "betas": (0.3, 0.9), "eps": 1e-6, "weight_decay": 0.5, "amsgrad": True}),
    ],
    "SGD": [
        config("SGD", {"lr": 1e-2}, "cosine"),
        config(
            "SGD",
            {"lr": 1e-1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
            "warmup_cosine",
            {"warmup": 0.1},
        ),
        config("SGD", {"lr": 5e-2, "momentum": 0.5, "dampening": 0.3}, "one_cycle"),
        config("SGD", {"lr": 3e-2, "momentum": 0.99, "weight_decay": 0.1}, "step", {"step_size": 0.3}),
        config("SGD", {"lr": 3e-2, "momentum": 0.0, "dampening": 0.5, "weight_decay": 0.1}),
    ],
    "RMSprop": [
        config("RMSprop", {"lr": 1e-2}, "cosine"),
        config(
            "RMSprop",
            {"lr": 1e-3, "alpha": 0.9, "eps": 1e-4, "momentum": 0.9, "centered": True},
            "warmup_cosine",
            {"warmup": 0.1},
        ),
        config("RMSprop", {"lr": 5e-3, "alpha": 0.999, "centered": True, "weight_decay": 0.01}, "one_cycle"),
        config("RMSprop", {"lr": 3e-3, "momentum": 0.5}, "exponential", {"end_factor": 0.1}),
    ],
    "NAdam": [
        config("NAdam", {"lr": 2e-3}, "cosine"),
        config(
            "NAdam",
            {"lr": 1e-2, "betas": (0.5, 0.99), "eps": 1e-3, "weight_decay": 0.1, "momentum_decay": 0.01},
            "warmup_cosine",
            {"warmup": 0.2},
        ),
        config(
            "NAdam",
            {"lr": 1e-1, "betas": (0.99, 0.9), "eps": 1.0, "weight_decay": 0.05, "decoupled_weight_decay": True},
            "one_cycle",
        ),
    ],
    "RAdam": [
        # beta2 0.999 rectifies from step 6 on, 0.9 from step 8, 0.6 never: both branches, and members switching apart.
        config("RAdam", {"lr": 1e-2}, "cosine"),
        config(
            "RAdam",
            {"lr": 3e-2, "betas": (0.5, 0.9), "eps": 1e-3, "weight_decay": 0.1},
            "step",
            {"step_size": 0.2, "gamma": 0.5},
        ),
        config(
            "RAdam",
            {"lr": 1e-1, "betas": (0.0, 0.6), "eps": 1.0, "weight_decay": 0.05, "decoupled_weight_decay": True},
            "one_cycle",
        ),
    ],
    "Adagrad": [
        config("Adagrad", {"lr": 1e-2}, "cosine"),
        config(
            "Adagrad",
            {"lr": 1e-1, "lr_decay": 0.01, "initial_accumulator_value": 0.1, "eps": 1e-6},
            "warmup_cosine",
            {"warmup": 0.1},
        ),
        config(
            "Adagrad",
            {"lr": 5e-2, "weight_decay": 0.01, "initial_accumulator_value": 1.0},
            "exponential",
            {"end_factor": 0.1},
        ),
    ],
    "Adamax": [
        config("Adamax", {"lr": 2e-3}, "cosine"),
        config("Adamax", {"lr": 1e-2, "betas": (0.5, 0.99), "eps": 1e-3, "weight_decay": 0.1}, "one_cycle"),
        config("Adamax", {"lr": 3e-2, "betas": (0.0, 0.9), "eps": 1.0}),
    ],
}


def feed(waiting: list) -> Callable[[int], list]:
    """``start(n)`` for train_batched: the next ``n`` entries of ``waiting``, taken out."""

    def start(n: int) -> list:
        taken, waiting[:n] = waiting[:n], []
        return taken

    return start


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in tensors])


class Reference:
    """One member the torch.optim way: its own parameters, optimizer and LR scheduler, built as the trainer builds them."""

    def __init__(self, cfg: Config, params: list[torch.Tensor]) -> None:
        self.params = [p.detach().clone().requires_grad_() for p in params]
        self.optimizer, self.scheduler = cfg.build(self.params, steps_per_epoch=STEPS_PER_EPOCH)

    def step(self, grads: list[torch.Tensor]) -> float:
        for p, g in zip(self.params, grads):
            p.grad = g.clone()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return lr


@pytest.mark.parametrize("family", list(MEMBERS))
def test_vectorized_optimizer_equals_torch_optim_bit_for_bit(family):
    torch.manual_seed(0)
    members = MEMBERS[family]
    init = [torch.randn(shape) for shape in SHAPES]
    references = [Reference(cfg, init) for cfg in members]
    stacked = flat(init).repeat(len(members), 1)
    optimizer = VECTORIZED[family](stacked, members, STEPS_PER_EPOCH)
    total = EPOCHS * STEPS_PER_EPOCH
    optimizer.plan(total // 2)
    for step in range(total):
        if step == total // 2:
            # Member 1 starts afresh (a refilled slot): its state, step count and schedule restart; the others go on.
            restarted = MEMBERS[family][0]
            references[1] = Reference(restarted, [p.detach() for p in references[1].params])
            optimizer.reset(1, restarted)
            optimizer.plan(total - step)
        grads = [torch.randn(len(members), *shape) for shape in SHAPES]
        lrs = [ref.step([g[k] for g in grads]) for k, ref in enumerate(references)]
        optimizer.step(torch.cat([g.flatten(1) for g in grads], dim=1))
        for k, ref in enumerate(references):
            assert torch.equal(stacked[k], flat(ref.params)), f"member {k} differs at step {step + 1}"
            assert optimizer.lr(k) == lrs[k]


def test_a_nan_in_one_member_leaves_the_others_bit_identical():
    torch.manual_seed(0)
    members = MEMBERS["Adam"]
    init = flat(torch.randn(shape) for shape in SHAPES).repeat(len(members), 1)
    clean, poisoned = init.clone(), init.clone()
    optimizers = [VECTORIZED["Adam"](params, members, STEPS_PER_EPOCH) for params in (clean, poisoned)]
    for optimizer in optimizers:
        optimizer.plan(50)
    for step in range(50):
        grad = torch.randn_like(init)
        optimizers[0].step(grad)
        if step >= 10:
            grad[2] = math.nan
        optimizers[1].step(grad)
        assert all(torch.equal(clean[k], poisoned[k]) for k in (0, 1, 3))
    assert poisoned[2].isnan().all()


def test_a_diverging_member_ends_alone_and_its_slot_is_refilled(quadratic):
    task, data = quadratic

    def sgd(lr: float, seed: int = 0) -> Config:
        return config("SGD", {"lr": lr}, task="quadratic-deep", epochs=3, batch_size=128, seed=seed)

    def run(members: list[Config]) -> dict[int, object]:
        waiting, results = list(enumerate(members)), {}
        train_batched(task, data, 3, feed(waiting), lambda key, metrics: None, results.update)
        return results

    calm = run([sgd(1e-3), sgd(3e-3, seed=1), sgd(1e-2, seed=2), sgd(2e-3, seed=3)])
    wild = run([sgd(1e-3), sgd(50.0, seed=1), sgd(1e-2, seed=2), sgd(2e-3, seed=3)])
    assert wild[1].status == "diverged" and wild[1].reason.startswith(f"diverged at epoch {len(wild[1].history)}")
    assert len(wild[1].history) < 3
    for key in (0, 2):  # the others, bit for bit
        assert wild[key].status == "complete" and wild[key].history == calm[key].history
    # The freed slot trained the fourth config from its own start, as alone (within rounding).
    alone = train(task, data, sgd(2e-3, seed=3))
    assert wild[3].status == "complete" and len(wild[3].history) == 3
    assert all(math.isclose(a.val_loss, b.val_loss, rel_tol=CURVE_RTOL) for a, b in zip(wild[3].history, alone.history))


def test_a_member_starts_from_the_parameters_of_its_trial_alone(digits):
    task, data = digits

    def alone(seed: int) -> torch.Tensor:  # as tuner.train.trainer.train builds the model
        torch.manual_seed(seed)
        return flat(task.model().parameters())

    population = _Population(
        task, data, [("a", config("Adam", {"lr": 1e-3}, seed=0)), ("b", config("Adam", {"lr": 1e-2}, seed=3))]
    )
    assert torch.equal(population.model.flat[0], alone(0)) and torch.equal(population.model.flat[1], alone(3))
    population.epoch()
    population.replace(1, "c", config("Adam", {"lr": 1e-2}, seed=7))
    assert torch.equal(population.model.flat[1], alone(7)) and not torch.equal(population.model.flat[0], alone(0))
    assert all(not state[1].any() for state in population.optimizer.state.values())
    assert population.optimizer.members[1].schedule.steps == 0 and len(population.members[1].result.history) == 0


def test_batched_learning_curves_match_the_same_configs_alone(digits):
    task, data = digits
    members = [
        config("Adam", {"lr": 1e-3}, "cosine", epochs=3),
        config("Adam", {"lr": 3e-3, "betas": (0.8, 0.99)}, "warmup_cosine", {"warmup": 0.2}, epochs=3, seed=1),
        config("Adam", {"lr": 1e-2, "eps": 1e-6}, "one_cycle", epochs=3, seed=2),
    ]
    waiting, results, seen = list(enumerate(members)), {}, []
    train_batched(
        task, data, 2, feed(waiting), lambda key, metrics: seen.append((key, metrics.epoch)), results.update, test=True
    )
    assert sorted(seen) == [(key, epoch) for key in range(3) for epoch in range(1, 4)]
    for key, cfg in enumerate(members):
        together, alone = results[key], train(task, data, cfg, test=True)
        assert together.status == "complete" and len(together.history) == 3
        for a, b in zip(together.history, alone.history):
            assert a.epoch == b.epoch and a.lr == b.lr
            assert math.isclose(a.train_loss, b.train_loss, rel_tol=CURVE_RTOL)
            assert math.isclose(a.val_loss, b.val_loss, rel_tol=CURVE_RTOL)
            assert abs(a.val_metric - b.val_metric) <= 2 / len(data.val)  # a sample or two on the edge
        assert math.isclose(together.test_loss, alone.test_loss, rel_tol=CURVE_RTOL)


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_bf16_runs_the_stacked_forward_in_bfloat16_and_follows_the_same_configs_alone(name, monkeypatch):
    # The CLI allows bf16 on CUDA only; both trainers autocast on any device, so the CPU runs the batched bf16 path too.
    task = load_task(name, {"channels": 4} if name == "digits-cnn" else {})
    data = load_data(task, torch.device("cpu"))
    dtypes, loss = [], task.loss
    monkeypatch.setattr(task, "loss", lambda output, target: dtypes.append(output.dtype) or loss(output, target))
    members = [
        dataclasses.replace(config("Adam", {"lr": 3e-3}, "cosine", task=name, epochs=2, seed=seed), amp="bf16")
        for seed in (0, 1)
    ]
    results = {}
    train_batched(task, data, 2, feed(list(enumerate(members))), lambda key, metrics: None, results.update)
    assert set(dtypes) == {torch.bfloat16}
    for key, cfg in enumerate(members):
        alone = train(task, data, cfg)
        for a, b in zip(results[key].history, alone.history, strict=True):
            assert math.isclose(a.val_loss, b.val_loss, rel_tol=BF16_RTOL) and math.isclose(
                a.train_loss, b.train_loss, rel_tol=BF16_RTOL
            )


SMALL = {
    "lstm-adding": {"train_size": 64, "length": 6},
    "tiny-transformer": {"train_size": 64},
    "digits-cnn": {"channels": 2},
}


@pytest.mark.parametrize("name", list(BUILTIN))
def test_every_built_in_task_batches_or_falls_back_with_its_reason(name):
    task = load_task(name, SMALL.get(name))
    data = load_data(task, torch.device("cpu"))
    population, why = population_that_fits(task, data, 4, task.batch_size, "none", ["Adam"])
    if name == "lstm-adding":  # torch's vmap has no batching rule for aten::lstm
        assert population == 1 and why.startswith("batched trials: task 'lstm-adding' cannot be batched")
        assert "lstm" in why
        assert len(why.splitlines()) == 1
        return
    assert (population, why) == (4, None)
    waiting = [
        (seed, config("Adam", {"lr": 1e-3}, task=name, epochs=1, batch_size=task.batch_size, seed=seed))
        for seed in (0, 1)
    ]
    results = {}
    train_batched(task, data, 2, feed(waiting), lambda key, metrics: None, results.update)
    assert [r.status for r in results.values()] == ["complete", "complete"]
    assert all(math.isfinite(r.history[0].val_loss) for r in results.values())


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_a_feed_forward_stack_runs_by_hand_like_vmap_would(name):
    # digits-mlp: Linear, ReLU, Linear as batched matrix products; digits-cnn: Conv2d, ReLU, MaxPool2d, ..., Flatten, Linear
    # with the members' channels side by side.
    task = load_task(name)
    data = load_data(task, torch.device("cpu"))
    stacked = StackedModel([seeded_model(task, seed, torch.device("cpu")) for seed in (0, 1, 2)], task.loss)
    assert stacked._layers is not None
    x, y = data.train.x[:48].view(3, 16, *data.train.x.shape[1:]), data.train.y[:48].view(3, 16)
    fast = stacked.losses(x, y)
    fast.sum().backward()
    fast_grad, fast_out = stacked.grad(), stacked.shared(data.val.x)
    stacked._layers = None
    general = stacked.losses(x, y)
    general.sum().backward()
    assert torch.allclose(fast, general) and torch.allclose(fast_grad, stacked.grad(), atol=1e-6)
    assert torch.allclose(fast_out, stacked.shared(data.val.x), atol=1e-5)


def test_relu_after_max_pooling_changes_no_bit_of_the_outputs_or_gradients():
    # digits-cnn's ReLU, MaxPool2d pairs run as MaxPool2d, ReLU; here with ties (zeros, repeated values) in the windows.
    task = load_task("digits-cnn")
    data = load_data(task, torch.device("cpu"))
    stacked = StackedModel([seeded_model(task, seed, torch.device("cpu")) for seed in (0, 1, 2)], task.loss)
    swapped = stacked._layers
    assert [type(layer).__name__ for _, layer in swapped[:3]] == ["Conv2d", "MaxPool2d", "ReLU"]
    x, y = data.train.x[:48].view(3, 16, *data.train.x.shape[1:]).clone(), data.train.y[:48].view(3, 16)
    x[:, :, :, :4] = x[:, :, :, :1]  # equal rows: equal values side by side in the pooling windows
    runs = []
    for layers in (swapped, [(name, layer) for name, layer in enumerate(stacked.module)]):
        stacked._layers = [(str(name), layer) for name, layer in layers]
        losses = stacked.losses(x, y)
        losses.sum().backward()
        runs.append((losses, stacked.grad(), stacked.shared(data.val.x)))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_a_model_whose_stacked_outputs_differ_falls_back(digits):
    task, data = digits

    class Cached(torch.nn.Module):  # keeps a copy of its weight that functional_call cannot replace
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(64, 10)
            self.frozen = self.linear.weight.detach().clone()

        def forward(self, x):
            return x @ self.frozen.T + self.linear.bias + 0 * self.linear.weight.sum()

    class Task(type(task)):
        def model(self):
            return Cached()

    why = stackable.why_not_batched(Task(), data)
    assert why is not None and "differ" in why


def test_a_model_with_a_parameter_that_gets_no_gradient_falls_back(digits):
    # torch.optim skips a parameter without a gradient; a population steps all of a member's parameters as one row.
    task, data = digits

    class Unused(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear, self.spare = torch.nn.Linear(64, 10), torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.linear(x)

    class Task(type(task)):
        def model(self):
            return Unused()

    assert population_that_fits(Task(), data, 4, 64, "none", ["Adam"]) == (
        1,
        (
            f"batched trials: task {task.name!r} cannot be batched, so its trials run one at a time: a stacked training step "
            "(vmap over its model and loss) raised RuntimeError: parameters spare.weight, spare.bias got no gradient "
            "(torch.optim would skip them; a population cannot)"
        ),
    )


def test_memory_decides_how_many_members(digits, monkeypatch):
    task, data = digits
    need = memory.member_bytes(task, data, 64, "none", ["Adam"])
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(3.5 * need / memory.MEMORY_SHARE))
    population, why = population_that_fits(task, data, 16, 64, "none", ["Adam"])
    assert population == 3 and "a population of 16 would need about" in why and why.endswith("a population of 3")
    monkeypatch.setattr(memory, "free_bytes", lambda device: need)
    assert population_that_fits(task, data, 16, 64, "none", ["Adam"])[0] == 1
    assert need > 4 * 4 * sum(p.numel() for p in seeded_model(task, 0, torch.device("cpu")).parameters())


def study_args(workdir, *extra: str) -> list[str]:
    return [
        "study",
        *extra,
        "--storage",
        f"sqlite:///{workdir}/t.db",
        "--out",
        str(workdir / "out"),
        "--no-progress",
        "--no-tracking",
    ]


def load(workdir, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir}/t.db")


def test_study_with_a_population_keeps_the_budget_exact_refills_and_resumes(workdir, capsys):
    # SGD on the quadratic diverges above lr ~2/60; the pruner prunes from the first complete trial on.
    (workdir / "hot.yaml").write_text(
        "optimizer: SGD\nparams:\n  lr: {low: 1.0e-3, high: 10.0, scale: log}\n  momentum: {low: 0.0, high: 0.9}\n"
    )
    exp = workdir / "exp.yaml"
    exp.write_text(
        "name: b\ntask: quadratic-deep\noptimizers: [hot.yaml]\nschedules: [constant, cosine]\ntrials: 10\nepochs: 3\nseed: 0\n"
        "pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}\nfinal_seeds: 1\npopulation: 4\n"
    )
    assert main(study_args(workdir, str(exp))) == 0
    assert "4 trials at once" in capsys.readouterr().err
    study = load(workdir, "b/hot")
    tally = counts(study)
    assert finished(study) == len(study.trials) == 10
    assert tally["diverged"] >= 1 and tally["complete"] >= 1  # members ended early and their slots were refilled
    for trial in study.trials:
        assert {"config", "device", "history", "outcome"} <= set(trial.user_attrs)
        history = trial.user_attrs["history"]
        assert history["epoch"] == sorted(trial.intermediate_values)
        if outcome(trial) == "diverged":
            epoch = max(trial.intermediate_values)
            assert math.isnan(trial.intermediate_values[epoch]) and trial.user_attrs["reason"].startswith(
                f"diverged at epoch {epoch}"
            )
        else:
            assert history["val_loss"] == [trial.intermediate_values[e] for e in history["epoch"]]
    first = [(t.number, t.params, t.user_attrs["history"]) for t in study.trials]
    assert main(study_args(workdir, str(exp))) == 0  # resumed: nothing to do
    assert [(t.number, t.params, t.user_attrs["history"]) for t in load(workdir, "b/hot").trials] == first
    assert main(study_args(workdir, str(exp), "--trials", "13", "--population", "8")) == 0  # topped up exactly
    study = load(workdir, "b/hot")
    assert finished(study) == len(study.trials) == 13
    assert [(t.number, t.params, t.user_attrs["history"]) for t in study.trials[:10]] == first


def test_a_storage_whose_stored_setup_says_batch_trials_resumes_with_population(workdir):
    # Earlier code called the population batch_trials; a study it stored keeps resuming under the new name.
    exp = workdir / "exp.yaml"
    exp.write_text(
        "name: old\ntask: quadratic-deep\noptimizers: [sgd]\ntrials: 4\nepochs: 1\nseed: 0\nfinal_seeds: 1\n"
        "population: 2\n"
    )
    assert main(study_args(workdir, str(exp))) == 0
    study = load(workdir, "old/sgd")
    study.set_user_attr("setup", study.user_attrs["setup"] | {"batch_trials": 2})
    first = [(t.number, t.params) for t in study.trials]
    assert main(study_args(workdir, str(exp), "--trials", "6")) == 0
    study = load(workdir, "old/sgd")
    assert finished(study) == len(study.trials) == 6
    assert [(t.number, t.params) for t in study.trials[:4]] == first


@pytest.mark.parametrize("population", ["1", "3"])
def test_messages_name_the_stored_trial_number_not_the_in_memory_one(workdir, capsys, population):
    import threading

    exp = workdir / "exp.yaml"
    exp.write_text(
        "name: broken\ntask: broken_tasks:FailsInTraining\noptimizers: [adam]\ntrials: 20\nepochs: 2\nseed: 0\n"
        f"final_seeds: 1\npopulation: {population}\n"
    )
    # Another worker's trial in flight (RUNNING, its heartbeat kept fresh) is not in this command's in-memory copy
    # of the study: the copy numbers its trials one lower than the storage does.
    storage = optuna.storages.RDBStorage(f"sqlite:///{workdir}/t.db")
    study = optuna.create_study(storage=storage, study_name="broken/adam")
    foreign = storage.create_new_trial(study._study_id)
    done = threading.Event()

    def beat() -> None:
        while not done.is_set():
            storage.record_heartbeat(foreign)
            done.wait(1.0)

    beating = threading.Thread(target=beat)
    beating.start()
    try:
        args = [arg for arg in study_args(workdir, str(exp)) if arg != "--no-progress"]
        assert main(args) == 2
    finally:
        done.set()
        beating.join()
    out, err = capsys.readouterr()
    trials = load(workdir, "broken/adam").trials
    assert trials[0].state == optuna.trial.TrialState.RUNNING  # the foreign trial: never in the copy
    failed = sorted(t.number for t in trials if outcome(t) == "failed")
    assert len(failed) >= 3 and failed[0] == 1
    said = sorted(int(line.split()[2]) for line in (out + err).splitlines() if line.startswith("adam trial "))
    assert said == failed  # the progress bar's failure lines
    assert f"traceback: trial {failed[-1]}'s user attribute" in err.splitlines()[-1]


def test_a_task_that_cannot_be_batched_runs_one_at_a_time_with_one_line(workdir, capsys):
    exp = workdir / "exp.yaml"
    exp.write_text(
        "name: l\ntask: lstm-adding\ntask_args: {train_size: 32, length: 4}\noptimizers: [adam]\ntrials: 2\nepochs: 1\n"
        "seed: 0\nfinal_seeds: 1\n"
    )
    assert main(study_args(workdir, str(exp), "--population", "4")) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "batched" in line]
    assert len(lines) == 1 and "task 'lstm-adding' cannot be batched, so its trials run one at a time" in lines[0]
    assert finished(load(workdir, "l/adam")) == 2


@pytest.mark.parametrize(("where", "value"), [("yaml", "0"), ("yaml", "two"), ("flag", "0")])
def test_a_bad_population_is_one_line_and_exit_2(workdir, capsys, where, value):
    exp = workdir / "exp.yaml"
    exp.write_text(
        "name: v\ntask: digits-mlp\noptimizers: [adam]\ntrials: 2\nepochs: 1\nseed: 0\n"
        + (f"population: {value}\n" if where == "yaml" else "")
    )
    argv = study_args(workdir, str(exp)) + (["--population", value] if where == "flag" else [])
    try:
        rc = main(argv)
    except SystemExit as exit:  # argparse's errors
        rc = exit.code
    err = capsys.readouterr().err.strip()
    assert (
        rc == 2
        and len(err.splitlines()) == 1
        and ("population" in err or "--population" in err)
        and not (workdir / "t.db").exists()
    )


def test_ctrl_c_stores_the_running_members_as_interrupted_and_the_rerun_redoes_them(workdir, capsys, monkeypatch):
    from tuner.tasks.digits import DigitsMLP

    args = study_args(
        workdir,
        "quickstart",
        "--optimizers",
        "sgd",
        "--trials",
        "5",
        "--epochs",
        "2",
        "--final-seeds",
        "1",
        "--population",
        "3",
    )
    calls = {"n": 0}
    original = DigitsMLP.model

    def interrupt_the_first_refill(self):
        calls["n"] += 1
        # Calls: the task check, the batchability check (2), the memory estimate, three members, then the first refill.
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(DigitsMLP, "model", interrupt_the_first_refill)
    assert main(args) == 130
    study = load(workdir, "quickstart/sgd")
    assert counts(study)["interrupted"] >= 1 and finished(study) + counts(study)["interrupted"] == len(study.trials)
    assert not (workdir / "out").exists()
    monkeypatch.setattr(DigitsMLP, "model", original)
    assert main(args) == 0
    study = load(workdir, "quickstart/sgd")
    assert finished(study) == 5


def test_an_exception_in_the_task_fails_the_running_members_and_the_study_goes_on(workdir, capsys, monkeypatch):
    from tuner.tasks.digits import DigitsMLP

    calls = {"n": 0}
    original = DigitsMLP.model

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 8:  # the first refill, as above
            raise RuntimeError("boom in user code")
        return original(self)

    monkeypatch.setattr(DigitsMLP, "model", flaky)
    args = study_args(
        workdir,
        "quickstart",
        "--optimizers",
        "adam",
        "--trials",
        "6",
        "--epochs",
        "2",
        "--final-seeds",
        "1",
        "--population",
        "3",
    )
    assert main(args) == 0
    study = load(workdir, "quickstart/adam")
    failed = [t for t in study.trials if outcome(t) == "failed"]
    assert failed and all(t.user_attrs["reason"] == "RuntimeError: boom in user code" for t in failed)
    assert finished(study) == len(study.trials) == 6


def test_jobs_2_with_a_population_keeps_the_budget_exact(workdir):
    cmd = [
        sys.executable,
        "-m",
        "tuner",
        *study_args(
            workdir,
            "quadratic-deep",
            "--optimizers",
            "adam",
            "--epochs",
            "1",
            "--final-seeds",
            "1",
            "--trials",
            "7",
            "--jobs",
            "2",
            "--population",
            "3",
        ),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    url = f"sqlite:///{workdir}/t.db"
    (name,) = [n for n in optuna.get_all_study_names(url) if not n.startswith(TICKETS_PREFIX)]
    study = optuna.load_study(study_name=name, storage=url)
    assert finished(study) == len(study.trials) == 7
    assert len({str(t.params) for t in study.trials}) == 7


# --- what the batched path could do differently from one trial alone (issue 17, case 03) ------------------------------


def frozen_first_layer(norm: bool) -> torch.nn.Module:
    """digits-mlp's shape with its first layer frozen (requires_grad=False); with ``norm``, a BatchNorm1d (buffers) after it."""
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 32), *([torch.nn.BatchNorm1d(32)] if norm else []), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )
    model[0].requires_grad_(False)
    return model


@pytest.mark.parametrize("norm", [False, True], ids=["feed-forward", "batch-norm"])
def test_frozen_parameters_and_buffers_train_batched_as_alone(digits, norm):
    # torch.optim skips a parameter without a gradient: a population must never step a frozen one either,
    # and each member's buffers (BatchNorm's running statistics) are its own.
    task, data = digits

    class Frozen(type(task)):
        def model(self):
            return frozen_first_layer(norm)

    task = Frozen()
    assert stackable.why_not_batched(task, data) is None
    members = [
        config("Adam", {"lr": 1e-2}, epochs=2, seed=0),
        config("Adam", {"lr": 3e-3, "weight_decay": 0.1}, epochs=2, seed=1),
    ]
    population = _Population(task, data, list(enumerate(members)))
    before = {name: t.clone() for name, t in population.model.frozen.items()}
    assert sorted(before) == ["0.bias", "0.weight"]
    population.epoch()
    assert all(torch.equal(population.model.frozen[name], t) for name, t in before.items())
    assert all(
        torch.equal(population.model.frozen["0.weight"][k], seeded_model(task, c.seed, torch.device("cpu"))[0].weight)
        for k, c in enumerate(members)
    )

    results: dict = {}
    train_batched(task, data, 2, feed(list(enumerate(members))), lambda key, metrics: None, results.update)
    for key, cfg in enumerate(members):
        alone = train(task, data, cfg)
        for a, b in zip(results[key].history, alone.history, strict=True):
            assert math.isclose(a.train_loss, b.train_loss, rel_tol=CURVE_RTOL)
            assert math.isclose(a.val_loss, b.val_loss, rel_tol=CURVE_RTOL)
