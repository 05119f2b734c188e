"""The effective per-parameter learning rate: its definition against torch's own updates, and its record."""

from __future__ import annotations

import math

import optuna
import pytest
import torch

from tuner.cli.main import main
from tuner.config.experiment import Config
from tuner.measure.step_sizes import PERCENTILES, StepSizes, effective_lr, largest, percentiles, recorded_steps
from tuner.tasks.check import load_data
from tuner.tasks.loading import load_task
from tuner.tracking.records import final_records, step_size_metrics
from tuner.train.optim import build_scheduler
from tuner.train.trainer import steps_per_epoch, train

GRADS = [[0.5, -2.0, 0.0], [0.25, 1.0, 0.0], [-1.0, 3.0, 0.0]]  # the third element never gets a gradient


def stepped(
    optimizer_class: type, steps: int = 3, **kwargs: float
) -> tuple[torch.nn.Parameter, torch.optim.Optimizer, torch.Tensor]:
    """A float64 parameter stepped ``steps`` times with :data:`GRADS`; returns it, its optimizer and the last Δθ."""
    param = torch.nn.Parameter(torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64))
    optimizer = optimizer_class([param], **kwargs)
    for grad in GRADS[:steps]:
        before = param.detach().clone()
        param.grad = torch.tensor(grad, dtype=torch.float64)
        optimizer.step()
    return param, optimizer, param.detach() - before


def test_adam_equals_the_hand_computed_rate_over_three_steps():
    lr, beta1, beta2, eps = 0.01, 0.9, 0.99, 1e-3
    param, optimizer, _ = stepped(torch.optim.Adam, lr=lr, betas=(beta1, beta2), eps=eps)
    m = v = [0.0] * 3
    for grad in GRADS:  # Kingma & Ba's moments, in plain floats
        m = [beta1 * a + (1 - beta1) * g for a, g in zip(m, grad)]
        v = [beta2 * a + (1 - beta2) * g * g for a, g in zip(v, grad)]
    t = len(GRADS)
    expected = [
        lr * math.sqrt(1 - beta2**t) / (1 - beta1**t) / (math.sqrt(b) + eps * math.sqrt(1 - beta2**t)) for b in v[:2]
    ]
    eta = effective_lr(optimizer, param, optimizer.param_groups[0], lr)
    assert eta[:2].tolist() == pytest.approx(expected, rel=1e-12)
    assert math.isnan(eta[2])  # no gradient yet: v = 0, left out


@pytest.mark.parametrize(
    ("optimizer_class", "kwargs", "direction"),
    [
        (torch.optim.Adam, {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-2}, "exp_avg"),
        (torch.optim.Adam, {"lr": 0.01, "amsgrad": True}, "exp_avg"),
        (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.0}, "exp_avg"),
        (torch.optim.RMSprop, {"lr": 0.01, "alpha": 0.9}, "grad"),
        (torch.optim.RMSprop, {"lr": 0.01, "centered": True, "eps": 0.1}, "grad"),
        (torch.optim.SGD, {"lr": 0.05}, "grad"),
        (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}, "momentum_buffer"),
    ],
)
def test_the_rate_times_the_direction_is_torchs_step(optimizer_class, kwargs, direction):
    """Δθ = −η ⊙ d with d the family's direction (module table): the definition is torch's own update."""
    param, optimizer, moved = stepped(optimizer_class, **kwargs)
    d = torch.tensor(GRADS[-1], dtype=torch.float64) if direction == "grad" else optimizer.state[param][direction]
    eta = effective_lr(optimizer, param, optimizer.param_groups[0], kwargs["lr"]).nan_to_num(0.0)
    assert torch.allclose(moved, -eta * d, rtol=1e-12, atol=0)


def test_sgd_records_its_scheduled_rate_exactly_at_every_recorded_step():
    task = load_task("digits-mlp")
    data = load_data(task, torch.device("cpu"))
    config = Config("SGD", {"lr": 0.3, "momentum": 0.9}, "cosine", {"eta_min": 0.001}, "digits-mlp", {}, 2, 256, 0)
    per_epoch = steps_per_epoch(len(data.train), config.batch_size)
    probe = StepSizes(per_epoch, config.epochs)
    train(task, data, config, step_hook=probe)
    record = probe.result()
    scheduled = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    scheduler = build_scheduler("cosine", {"eta_min": 0.001}, scheduled, per_epoch * config.epochs)
    lrs = []
    for _ in range(per_epoch * config.epochs):
        lrs.append(scheduled.param_groups[0]["lr"])
        scheduled.step()
        scheduler.step()
    assert record["steps"] == sorted(recorded_steps(per_epoch, config.epochs, 1))
    assert record["lr"] == [lrs[s - 1] for s in record["steps"]]
    for name in record["tensors"]:
        assert record["effective_lr"][name] == [[lr] * len(PERCENTILES) for lr in record["lr"]]
    assert record["optimizer"] == "SGD" and record["defined"]


def test_a_recorded_step_holds_percentiles_per_tensor_and_the_realised_ratio():
    model = torch.nn.Linear(40, 30)  # 1,200 weights: more than SAMPLE, so sampled
    optimizer = torch.optim.RMSprop(model.parameters(), lr=0.01)
    probe = StepSizes(steps_per_epoch=1, epochs=2, per_epoch=1)
    for _ in range(2):
        model(torch.randn(8, 40)).square().mean().backward()
        after = probe(model, optimizer)
        optimizer.step()
        after()
        optimizer.zero_grad()
    record = probe.result()
    assert record["steps"] == [1, 2] and record["tensors"] == ["weight", "bias"] and record["numel"] == [1200, 30]
    for name in record["tensors"]:
        for kind in ("effective_lr", "ratio"):
            assert all(row == sorted(row) and len(row) == len(PERCENTILES) for row in record[kind][name])
    # Without momentum, RMSprop moves each element by η·|g|: the ratio is η.
    assert torch.allclose(
        torch.tensor(record["ratio"]["bias"]), torch.tensor(record["effective_lr"]["bias"]), rtol=1e-5
    )
    assert [s.tensor for s in largest(record, 1)] == ["weight"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_percentiles_equal_torchs_nanquantile_in_float64(dtype):
    rows = torch.randn(6, 700, dtype=dtype, generator=torch.Generator().manual_seed(0))
    rows[0, 300:] = math.nan
    rows[1] = math.nan
    rows[2, 1:] = math.nan
    expected = torch.nanquantile(rows.double(), torch.tensor(PERCENTILES, dtype=torch.float64) / 100, dim=1).T
    assert torch.allclose(percentiles(rows), expected, rtol=1e-12, atol=1e-14, equal_nan=True)


def test_recorded_steps_are_the_first_steps_and_a_few_per_epoch():
    assert sorted(recorded_steps(17, 3, 2)) == [1, 2, 3, 4, 5, 8, 17, 25, 34, 42, 51]
    assert sorted(recorded_steps(2, 4, 3)) == [1, 2, 3, 4, 5, 6, 7, 8]  # an epoch of 2 steps: both
    with pytest.raises(ValueError, match="per_epoch: 0 is not allowed"):
        recorded_steps(5, 1, 0)


def test_mlflow_metrics_of_a_record_leave_out_what_is_undefined():
    record = {
        "percentiles": [5, 50, 95],
        "steps": [1, 9],
        "effective_lr": {"w": [[1.0, 2.0, 3.0], [math.nan] * 3]},
        "ratio": {"w": [[0.5, 0.5, 0.5], [0.1, 0.2, 0.3]]},
    }
    points = step_size_metrics(record)
    assert ("step_size/w/lr_p50", 2.0, 1) in points and ("step_size/w/ratio_p95", 0.3, 9) in points
    assert len(points) == 9


def test_the_final_runs_store_step_sizes_and_the_ablation_mirror_them_and_write_evidence(tmp_path):
    db = f"sqlite:///{tmp_path}/t.db"
    flags = ["--storage", db, "--out", str(tmp_path / "out"), "--no-tracking", "--no-progress"]
    assert (
        main(
            [
                "study",
                "quickstart",
                "--optimizers",
                "adam",
                "--trials",
                "1",
                "--epochs",
                "1",
                "--final-seeds",
                "1",
                *flags,
            ]
        )
        == 0
    )
    study = optuna.load_study(study_name="quickstart/adam", storage=db)
    final = study.user_attrs["final"]
    record = final["step_sizes"][0]
    assert record["optimizer"] == "Adam" and record["steps"][:5] == [1, 2, 3, 4, 5]
    runs = final_records(study.study_name, "adam", study.user_attrs["setup"], final, study.trials[final["trial"]])
    names = {name for name, *_ in runs[0].metrics}
    assert {f"step_size/0.weight/lr_p{q}" for q in PERCENTILES} <= names
    assert (tmp_path / "out" / "plots" / "step_sizes.png").is_file()
    off = final["bias_correction_off"]
    assert off["seeds"] == final["seeds"] and off["step_sizes"][0]["optimizer"] == "AdamCorrections"
    evidence = (tmp_path / "out" / "evidence.md").read_text()
    rows = [line.split("|")[1].strip() for line in evidence.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == [
        "claim",
        "adaptive learning rate",
        "memory",
        "convergence speed",
        "bias correction",
        "ease of tuning",
        "suited to",
    ]
    assert "adam (Adam)" in evidence and "step 1 median Δθ/g" in evidence
    assert all(line.count("|") == 3 for line in evidence.splitlines() if line.startswith("| "))  # claim + one optimizer
