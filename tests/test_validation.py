"""Bad input ends before any study exists: one line on stderr, exit code 2, no traceback.

Each case writes the files it needs into a fresh working directory, runs the
CLI in-process, and checks that stderr is exactly one line naming the file (or
flag), the field, the bad value and what is allowed; that the exit code is 2;
and that nothing was created: no storage file, no output folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import yaml

from tuner.cli.main import main
from tuner.config.experiment import load_experiment
from tuner.config.export import load_config
from tuner.config.spaces import load_space

DROP = object()  # an experiment key to leave out

BASE_EXPERIMENT = {
    "name": "t",
    "task": "digits-mlp",
    "optimizers": ["adam"],
    "trials": 1,
    "epochs": 1,
    "seed": 0,
    "final_seeds": 1,
}

BASE_CONFIG = {
    "format": 1,
    "optimizer": {"class": "torch.optim.Adam", "kwargs": {"lr": 0.01, "betas": [0.9, 0.999], "eps": 1.0e-8}},
    "schedule": {"name": "cosine", "interval": "step", "params": {}},
    "training": {"task": "digits-mlp", "task_args": {}, "epochs": 1, "batch_size": 64, "seed": 0, "objective": "loss"},
}


def experiment(**changes: object) -> str:
    """The text of a valid experiment file with ``changes`` (``DROP`` removes a key)."""
    data = {k: v for k, v in (BASE_EXPERIMENT | changes).items() if v is not DROP}
    return yaml.safe_dump(data, sort_keys=False)


def adam_space(*lines: str, optimizer: str = "Adam") -> str:
    """The text of a search space with ``lines`` under ``params`` (raw YAML, so ``1e-3`` stays as typed)."""
    return f"optimizer: {optimizer}\nparams:\n" + "".join(f"  {line}\n" for line in lines)


def config(**changes: object) -> str:
    """The text of a valid best-config file with sections updated by ``changes``."""
    data = dict(BASE_CONFIG)
    for key, value in changes.items():
        data[key] = data[key] | value if isinstance(data.get(key), dict) and isinstance(value, dict) else value
    return yaml.safe_dump(data, sort_keys=False)


def case(id: str, argv: list[str], expect: list[str], files: dict[str, str | bytes] | None = None):
    return pytest.param(argv, files or {}, expect, id=id)


def study(
    id: str, expect: list[str], *, exp: str | None = None, flags: tuple[str, ...] = (), files: dict | None = None
):
    """A ``tuner study exp.yaml`` case; ``exp`` is the experiment text (default: a valid one)."""
    files = {"exp.yaml": experiment() if exp is None else exp} | (files or {})
    return case(id, ["study", "exp.yaml", *flags], expect, files)


def space(id: str, text: str, expect: list[str]):
    """A ``tuner study`` case whose experiment uses the user's search space ``space.yaml``."""
    return study(id, ["space.yaml", *expect], exp=experiment(optimizers=["space.yaml"]), files={"space.yaml": text})


def broken(factory: str, expect: list[str]):
    """A ``tuner study`` case whose task is ``broken_tasks:<factory>`` (tests/broken_tasks.py)."""
    return study(
        f"task-broken-{factory}", ["exp.yaml", "task", *expect], exp=experiment(task=f"broken_tasks:{factory}")
    )


CASES = [
    # --- the experiment file itself --------------------------------------------------------------
    study("exp-unknown-key", ["exp.yaml", "'trails'", "allowed", "trials"], exp=experiment(trails=3)),
    study(
        "exp-batch-trials-renamed",
        ["exp.yaml", "batch_trials", "4", "renamed: use population"],
        exp=experiment(batch_trials=4),
    ),
    study("exp-missing-name", ["exp.yaml", "missing", "'name'", "required"], exp=experiment(name=DROP)),
    study("exp-missing-task", ["exp.yaml", "missing", "'task'", "required"], exp=experiment(task=DROP)),
    study(
        "exp-missing-optimizers", ["exp.yaml", "missing", "'optimizers'", "required"], exp=experiment(optimizers=DROP)
    ),
    study("exp-missing-trials", ["exp.yaml", "missing", "'trials'", "required"], exp=experiment(trials=DROP)),
    study("exp-missing-epochs", ["exp.yaml", "missing", "'epochs'", "required"], exp=experiment(epochs=DROP)),
    study("exp-missing-seed", ["exp.yaml", "missing", "'seed'", "required"], exp=experiment(seed=DROP)),
    study("exp-name-with-slash", ["exp.yaml", "name", "'a/b'", "without '/'"], exp=experiment(name="a/b")),
    study("exp-name-empty", ["exp.yaml", "name", "''", "non-empty"], exp=experiment(name="")),
    study(
        "exp-name-too-long",
        ["exp.yaml", "name", "201 bytes", "at most 200 bytes", "MLflow experiment"],
        exp=experiment(name="n" * 201),
    ),
    study(
        "exp-name-too-long-in-utf8",
        ["exp.yaml", "name", "202 bytes", "at most 200 bytes"],
        exp=experiment(name="é" * 101),
    ),
    study("exp-name-nul", ["exp.yaml", "name", "NUL"], exp=experiment(name="a\0b")),
    study("exp-name-dot-dot", ["exp.yaml", "name", "'..'", "not '.' or '..'"], exp=experiment(name="..")),
    study(
        "exp-space-name-too-long",
        ["exp.yaml", "optimizers", "201 bytes", "at most 200 bytes"],
        exp=experiment(optimizers=["s" * 201 + ".yaml"]),
        files={"s" * 201 + ".yaml": "optimizer: Adam\nparams: {}\n"},
    ),
    study(
        "exp-unknown-optimizer",
        ["exp.yaml", "optimizers", "'adadelta'", "adam"],
        exp=experiment(optimizers=["adam", "adadelta"]),
    ),
    study(
        "exp-optimizers-missing-yaml",
        ["exp.yaml", "optimizers", "missing.yaml", "adam"],
        exp=experiment(optimizers=["missing.yaml"]),
    ),
    study("exp-optimizers-empty", ["exp.yaml", "optimizers", "[]", "non-empty"], exp=experiment(optimizers=[])),
    study("exp-optimizers-not-strings", ["exp.yaml", "optimizers", "3", "list"], exp=experiment(optimizers=[3])),
    study(
        "exp-optimizers-schedules",
        ["exp.yaml", "optimizers", "'schedules'", "adam"],
        exp=experiment(optimizers=["schedules"]),
    ),
    study(
        "exp-optimizers-twice", ["exp.yaml", "optimizers", "adam", "twice"], exp=experiment(optimizers=["adam", "adam"])
    ),
    study("exp-trials-zero", ["exp.yaml", "trials", "0", ">= 1"], exp=experiment(trials=0)),
    study("exp-trials-text", ["exp.yaml", "trials", "'ten'", "integer"], exp=experiment(trials="ten")),
    study("exp-trials-float", ["exp.yaml", "trials", "2.5", "integer"], exp=experiment(trials=2.5)),
    study("exp-trials-bool", ["exp.yaml", "trials", "True", "integer"], exp=experiment(trials=True)),
    study("exp-epochs-negative", ["exp.yaml", "epochs", "-1", ">= 1"], exp=experiment(epochs=-1)),
    study("exp-batch-size-zero", ["exp.yaml", "batch_size", "0", ">= 1"], exp=experiment(batch_size=0)),
    study("exp-num-workers-negative", ["exp.yaml", "num_workers", "-1", ">= 0"], exp=experiment(num_workers=-1)),
    study("exp-num-workers-text", ["exp.yaml", "num_workers", "'auto'", "integer"], exp=experiment(num_workers="auto")),
    study("exp-seed-negative", ["exp.yaml", "seed", "-1", "from 0 to"], exp=experiment(seed=-1)),
    study("exp-seed-text", ["exp.yaml", "seed", "'zero'", "from 0 to"], exp=experiment(seed="zero")),
    study("exp-seed-too-large", ["exp.yaml", "seed", "4294967296", "2147483647"], exp=experiment(seed=2**32)),
    study(
        "exp-sampler-seed",
        ["exp.yaml", "sampler", "'seed'", "experiment's seed"],
        exp=experiment(sampler={"name": "random", "seed": 7}),
    ),
    study(
        "exp-sampler-bad-argument-value",
        ["exp.yaml", "sampler", "gamma", "tpe"],
        exp=experiment(sampler={"name": "tpe", "gamma": 0.5, "n_startup_trials": 1}),
    ),
    study(
        "exp-pruner-bad-reduction-factor",
        ["exp.yaml", "pruner", "hyperband", "reduction_factor"],
        exp=experiment(pruner={"name": "hyperband", "reduction_factor": 1}),
    ),
    study("exp-final-seeds-zero", ["exp.yaml", "final_seeds", "0", ">= 1"], exp=experiment(final_seeds=0)),
    study("exp-unknown-sampler", ["exp.yaml", "sampler", "'grid'", "tpe"], exp=experiment(sampler="grid")),
    study("exp-unknown-pruner", ["exp.yaml", "pruner", "'asha'", "median"], exp=experiment(pruner="asha")),
    study("exp-sampler-not-a-name", ["exp.yaml", "sampler", "3", "tpe"], exp=experiment(sampler=3)),
    study(
        "exp-sampler-unknown-argument",
        ["exp.yaml", "sampler", "n_startup", "n_startup_trials"],
        exp=experiment(sampler={"name": "tpe", "n_startup": 3}),
    ),
    study(
        "exp-pruner-unknown-argument",
        ["exp.yaml", "pruner", "warmup", "n_warmup_steps"],
        exp=experiment(pruner={"name": "median", "warmup": 3}),
    ),
    study(
        "exp-unknown-schedule",
        ["exp.yaml", "schedules", "'warmup'", "cosine"],
        exp=experiment(schedules=["cosine", "warmup"]),
    ),
    study("exp-schedules-empty", ["exp.yaml", "schedules", "[]", "cosine"], exp=experiment(schedules=[])),
    study("exp-schedules-text", ["exp.yaml", "schedules", "'cosine'", "list"], exp=experiment(schedules="cosine")),
    study(
        "exp-objective-unknown", ["exp.yaml", "objective", "'recall'", "accuracy"], exp=experiment(objective="recall")
    ),
    study(
        "exp-objective-direction",
        ["exp.yaml", "direction", "'up'", "maximize"],
        exp=experiment(objective={"metric": "loss", "direction": "up"}),
    ),
    study(
        "exp-objective-unknown-key",
        ["exp.yaml", "objective", "'goal'", "direction"],
        exp=experiment(objective={"goal": "loss"}),
    ),
    study(
        "exp-target-text", ["exp.yaml", "target", "'1e-1'", "finite number", "1.0e-3"], exp=experiment(target="1e-1")
    ),
    study("exp-task-args-not-mapping", ["exp.yaml", "task_args", "[1]", "mapping"], exp=experiment(task_args=[1])),
    study("exp-malformed-yaml", ["exp.yaml", "malformed YAML", "line"], exp="name: [unclosed\ntrials: 3\n"),
    study("exp-yaml-is-list", ["exp.yaml", "mapping", "list"], exp="- name: t\n- trials: 3\n"),
    study("exp-yaml-empty", ["exp.yaml", "mapping"], exp=""),
    study("exp-not-utf8", ["exp.yaml", "UTF-8"], exp=b"name: t\xff\xfe\n"),
    case("exp-file-missing", ["study", "nonexistent.yaml"], ["nonexistent.yaml", "no such file", "quickstart"]),
    # YAML that means something other than what it says (tuner.config.strict_yaml), in every file kind
    study(
        "exp-duplicate-key",
        ["exp.yaml", "line 9", "'epochs'", "twice", "line 6", "unique"],
        exp=experiment() + "epochs: 2\n",
    ),
    study(
        "exp-duplicate-nested-key",
        ["exp.yaml", "line 9", "'hidden'", "twice", "line 9"],
        exp=experiment() + "task_args: {hidden: 32, hidden: 64}\n",
    ),
    study(
        "exp-yaml11-bool-on",
        ["exp.yaml", "line 9", "'on'", "YAML 1.1 boolean", "true or false"],
        exp=experiment() + "target: on\n",
    ),
    study(
        "exp-yaml11-bool-no",
        ["exp.yaml", "line 9", "'No'", "YAML 1.1 boolean"],
        exp=experiment() + "task_args: {hidden: No}\n",
    ),
    study(
        "exp-yaml11-octal",
        ["exp.yaml", "line 8", "0123", "octal number 83"],
        exp=experiment(seed=DROP) + "seed: 0123\n",
    ),
    study(
        "exp-yaml11-base-60", ["exp.yaml", "line 8", "1:30", "base-60"], exp=experiment(trials=DROP) + "trials: 1:30\n"
    ),
    study(
        "exp-task-args-bool-for-int",
        ["exp.yaml", "task_args.hidden", "True", "an int", "128"],
        exp=experiment(task_args={"hidden": True}),
    ),
    study(
        "exp-task-args-text-for-int",
        ["exp.yaml", "task_args.hidden", "'1e2'", "YAML reads this as text"],
        exp=experiment(task_args={"hidden": "1e2"}),
    ),
    study(
        "exp-sampler-bool-for-int",
        ["exp.yaml", "sampler", "n_startup_trials", "True", "an int"],
        exp=experiment(sampler={"name": "tpe", "n_startup_trials": True}),
    ),
    study(
        "exp-pruner-text-for-int",
        ["exp.yaml", "pruner", "n_warmup_steps", "'3'", "an int"],
        exp=experiment(pruner={"name": "median", "n_warmup_steps": "3"}),
    ),
    study(
        "exp-sampler-int-for-bool",
        ["exp.yaml", "sampler", "scramble", "1", "a bool"],
        exp=experiment(sampler={"name": "qmc", "scramble": 1}),
    ),
    # --- the task ---------------------------------------------------------------------------------
    study("task-unknown-name", ["exp.yaml", "task", "'nosuch'", "digits-mlp"], exp=experiment(task="nosuch")),
    study(
        "task-path-does-not-import",
        ["exp.yaml", "task", "nosuchpkg.mod", "import", "the folder that holds 'nosuchpkg'", "PYTHONPATH"],
        exp=experiment(task="nosuchpkg.mod:factory"),
    ),
    study(
        "task-path-no-attribute",
        ["exp.yaml", "task", "'NoSuch'", "callable"],
        exp=experiment(task="tuner.tasks:NoSuch"),
    ),
    study(
        "task-path-not-callable",
        ["exp.yaml", "task", "'BUILTIN'", "callable"],
        exp=experiment(task="tuner.tasks:BUILTIN"),
    ),
    study("task-factory-returns-no-task", ["exp.yaml", "task", "dict", "Task"], exp=experiment(task="builtins:dict")),
    study("task-not-a-string", ["exp.yaml", "task", "3", "package.module:factory"], exp=experiment(task=3)),
    study(
        "task-args-unknown-key", ["exp.yaml", "task_args", "'widht'", "hidden"], exp=experiment(task_args={"widht": 3})
    ),
    study(
        "task-args-wrong-type",
        ["exp.yaml", "task_args", "hidden", "'wide'", "int"],
        exp=experiment(task_args={"hidden": "wide"}),
    ),
    # a task's own code misbehaves (tests/broken_tasks.py: each factory breaks one rule)
    broken("raises", ["'broken_tasks:raises'", "factory raised RuntimeError: no such dataset"]),
    broken("returns_none", ["'broken_tasks:returns_none'", "NoneType", "lacks name", "tuner.tasks.task.Task"]),
    broken("bad_metric", ["'broken_tasks:bad_metric'", "metric 3", "non-empty string"]),
    broken("bad_epochs", ["'broken_tasks:bad_epochs'", "epochs 0", "integer >= 1"]),
    broken("DataRaises", ["'tiny' does not work", "data() raised OSError: cannot read digits.csv"]),
    broken("DataIsTuple", ["'tiny' does not work", "data() returned tuple", "tuner.tasks.task.Data"]),
    broken("SplitIsTuple", ["'tiny' does not work", "data().train", "Split of two tensors"]),
    broken("LengthsDiffer", ["'tiny' does not work", "train split has 16 inputs but 15 targets"]),
    broken(
        "ShapesDoNotFit",
        ["'tiny' does not work", "model(train inputs of shape (8, 4))", "RuntimeError", "shapes cannot be multiplied"],
    ),
    broken(
        "ModelIsAFunction", ["'tiny' does not work", "model() returned builtin_function_or_method", "torch.nn.Module"]
    ),
    broken("NoParameters", ["'tiny' does not work", "no trainable parameters"]),
    broken("OutputNotBatchFirst", ["'tiny' does not work", "model() returned (1, 8) for 8 inputs", "batch first"]),
    broken("LossNotScalar", ["'tiny' does not work", "loss() returned (8, 1)", "scalar tensor"]),
    broken("LossBroadcasts", ["'tiny' does not work", "loss(outputs of shape (8, 1)", "UserWarning", "broadcasting"]),
    broken("LossDetached", ["'tiny' does not work", "loss() does not depend on the model's parameters"]),
    broken("LossNotFinite", ["'tiny' does not work", "loss() is inf", "finite"]),
    broken("ScoreIsTensor", ["'tiny' does not work", "score() returned Tensor", "float"]),
    broken("ScoreNaN", ["'tiny' does not work", "score() is nan", "finite"]),
    # ... and a task whose data are Datasets
    broken("DatasetEmpty", ["'tiny' does not work", "the val split is an empty Dataset"]),
    broken("DatasetIterable", ["'tiny' does not work", "data().train is a Stream without __len__", "map-style"]),
    broken("DatasetsMixedWithSplits", ["'tiny' does not work", "mixes Splits and Datasets"]),
    broken("SamplerYieldsNothing", ["'tiny' does not work", "the training DataLoader yields no batch"]),
    broken(
        "CollateFails", ["'tiny' does not work", "first training batch", "collate_fn) raised KeyError: 'input_ids'"]
    ),
    broken("BatchIsADict", ["'tiny' does not work", "a batch is a dict, not a pair (inputs, target)", "unpack(batch)"]),
    broken(
        "ModelCannotTakeBatch",
        ["'tiny' does not work", "model(a training batch's inputs {'features': (8, 4)})", "TypeError"],
    ),
    # ... and a task with its own training loop (fit)
    broken(
        "LoopRaises",
        ["'tiny-loop' does not work", "fit(run)", "raised RuntimeError: CUDA error: device-side assert triggered"],
    ),
    broken(
        "LoopNeverReports", ["'tiny-loop' does not work", "ReportError: fit(run) returned without calling run.report"]
    ),
    broken("LoopReportsOutOfOrder", ["'tiny-loop' does not work", "report(epoch=2) out of order", "expected 1"]),
    broken("LoopReportsNotANumber", ["'tiny-loop' does not work", "val_loss is str", "allowed: a number"]),
    broken(
        "LoopReturnsNoTestValues",
        ["'tiny-loop' does not work", "fit(run) returned NoneType when run.test is True", "test_loss and test_metric"],
    ),
    # --- a user's search space --------------------------------------------------------------------
    space("space-unknown-param", adam_space("momentum: 0.9"), ["params", "'momentum'", "Adam", "beta1"]),
    space("space-betas-not-split", adam_space("betas: [0.9, 0.999]"), ["params", "'betas'", "beta1"]),
    space(
        "space-inverted-range",
        adam_space("lr: {low: 1.0, high: 1.0e-5, scale: log}"),
        ["lr", "inverted", "low=1.0", "low < high"],
    ),
    space("space-empty-range", adam_space("lr: {low: 0.01, high: 0.01}"), ["lr", "empty", "0.01", "low < high"]),
    space(
        "space-log-zero-low", adam_space("lr: {low: 0.0, high: 1.0, scale: log}"), ["lr", "low", "0.0", "log", "> 0"]
    ),
    space(
        "space-log-negative-low",
        adam_space("eps: {low: -1.0e-8, high: 1.0, scale: log}"),
        ["eps", "low", "-1e-08", "> 0"],
    ),
    space("space-beta1-high-one-linear", adam_space("beta1: {low: 0.5, high: 1.0}"), ["beta1", "1.0", "[0, 1)"]),
    space("space-beta2-low-negative", adam_space("beta2: {low: -0.1, high: 0.99}"), ["beta2", "-0.1", "[0, 1)"]),
    space("space-beta1-fixed-one", adam_space("beta1: 1.0"), ["beta1", "1.0", "[0, 1)"]),
    space(
        "space-log1m-high-one",
        adam_space("beta2: {low: 0.9, high: 1.0, scale: log1m}"),
        ["beta2", "high", "1.0", "log1m", "< 1"],
    ),
    space("space-negative-lr", adam_space("lr: -0.001"), ["lr", "-0.001", ">= 0"]),
    space("space-lr-text", adam_space("lr: fast"), ["lr", "'fast'", "float"]),
    space("space-lr-1e-3-is-text", adam_space("lr: 1e-3"), ["lr", "'1e-3'", "text", "1.0e-3"]),
    space(
        "space-low-1e-5-is-text",
        adam_space("lr: {low: 1e-5, high: 1.0, scale: log}"),
        ["lr", "low", "'1e-5'", "text", "1.0e-3"],
    ),
    space("space-bool-for-float", adam_space("eps: true"), ["eps", "True", "float"]),
    space(
        "space-unknown-scale", adam_space("lr: {low: 1.0e-5, high: 1.0, scale: exp}"), ["lr", "scale", "'exp'", "log1m"]
    ),
    space("space-range-unknown-key", adam_space("lr: {low: 1.0e-5, hi: 1.0}"), ["lr", "'hi'", "high"]),
    space("space-range-missing-high", adam_space("lr: {low: 1.0e-5}"), ["lr", "low", "high"]),
    space(
        "space-int-not-bool",
        adam_space("lr: {low: 1, high: 2, int: yes please}"),
        ["lr", "int", "'yes please'", "true or false"],
    ),
    space("space-list-not-choices", adam_space("lr: [0.1, 0.01]"), ["lr", "list", "choices"]),
    space("space-choices-empty", adam_space("lr: {choices: []}"), ["lr", "choices", "[]", "non-empty"]),
    space("space-choices-wrong-type", adam_space("amsgrad: {choices: [false, maybe]}"), ["amsgrad", "'maybe'", "bool"]),
    space(
        "space-optimizer-adadelta", adam_space("lr: 0.01", optimizer="Adadelta"), ["optimizer", "'Adadelta'", "Adam"]
    ),
    space("space-optimizer-missing", "params:\n  lr: 0.01\n", ["optimizer", "None", "Adam"]),
    space("space-unknown-top-key", adam_space("lr: 0.01") + "schedule: cosine\n", ["'schedule'", "params"]),
    space("space-params-not-mapping", "optimizer: Adam\nparams: [lr]\n", ["params", "mapping"]),
    space("space-malformed-yaml", "optimizer: Adam\nparams: {lr: [0.1\n", ["malformed YAML", "line"]),
    space("space-yaml-is-list", "- optimizer: Adam\n", ["mapping", "list"]),
    space(
        "space-duplicate-key",
        adam_space("lr: {low: 1.0e-4, high: 1.0e-1, scale: log}", "eps: 1.0e-8", "lr: 1.0e-3"),
        ["line 5", "'lr'", "twice", "line 3"],
    ),
    space("space-duplicate-top-key", adam_space("lr: 0.01") + "optimizer: SGD\n", ["line 4", "'optimizer'", "line 1"]),
    space("space-yaml11-bool", adam_space("amsgrad: yes"), ["line 3", "'yes'", "YAML 1.1 boolean", "true or false"]),
    space(
        "space-yaml11-bool-in-choices",
        adam_space("amsgrad: {choices: [off, on]}"),
        ["line 3", "'off'", "YAML 1.1 boolean"],
    ),
    # --- command-line flags (the experiment file is valid) ------------------------------------------
    study("flag-trials-zero", ["--trials", "'0'", ">= 1"], flags=("--trials", "0")),
    study("flag-epochs-text", ["--epochs", "'abc'", "integer"], flags=("--epochs", "abc")),
    study("flag-seed-negative", ["--seed", "'-3'", ">= 0"], flags=("--seed", "-3")),
    study("flag-final-seeds-zero", ["--final-seeds", "'0'", ">= 1"], flags=("--final-seeds", "0")),
    pytest.param(
        ["study", "exp.yaml", "--device", "cuda:7"],
        {"exp.yaml": experiment()},
        ["--device", "'cuda:7'", "cpu"],
        id="flag-device-cuda-7",
        marks=pytest.mark.skipif(
            torch.cuda.is_available() and torch.cuda.device_count() > 7, reason="this machine has a cuda:7"
        ),
    ),
    study("flag-device-tpu", ["--device", "'tpu'", "cpu"], flags=("--device", "tpu")),
    pytest.param(
        ["study", "exp.yaml", "--device", "cuda"],
        {"exp.yaml": experiment()},
        ["--device", "'cuda'", "not available", "available: auto, cpu"],
        id="flag-device-cuda-unavailable",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
    ),
    study("flag-amp-on-cpu", ["--amp", "'bf16'", "cpu", "CUDA"], flags=("--device", "cpu", "--amp", "bf16")),
    study("flag-amp-unknown", ["--amp", "'fp16'", "none, bf16"], flags=("--amp", "fp16")),
    study("flag-device-mps-unavailable", ["--device", "'mps'", "cpu"], flags=("--device", "mps")),
    study(
        "flag-storage-bad-url",
        ["--storage", "notaurl://x", "sqlite:///"],
        exp=experiment(task="quadratic-deep"),
        flags=("--storage", "notaurl://x"),
    ),
    study("flag-optimizers-adadelta", ["--optimizers", "'adadelta'", "adam"], flags=("--optimizers", "adadelta")),
    study("flag-task-unknown", ["--task", "'nosuch'", "digits-mlp"], flags=("--task", "nosuch")),
    study(
        "flag-out-is-a-file",
        ["--out", "outfile", "folder"],
        exp=experiment(task="quadratic-deep"),
        flags=("--out", "outfile"),
        files={"outfile": ""},
    ),
    study("flag-seed-too-large", ["--seed", "4294967296", "2147483647"], flags=("--seed", str(2**32))),
    study(
        "flag-out-under-a-file",
        ["--out", "outfile/sub", "writable folder"],
        flags=("--out", "outfile/sub"),
        files={"outfile": ""},
    ),
    study("flag-out-folder-name-too-long", ["--out", "too long", "255 bytes"], flags=("--out", "o" * 256)),
    study("flag-out-path-too-long", ["--out", "too long", "whole path"], flags=("--out", "/".join(["o" * 200] * 21))),
    study("flag-unknown-option", ["--trails", "unknown option of tuner study", "--trials"], flags=("--trails", "3")),
    study("flag-threads-text", ["--threads", "'two'", "integer"], flags=("--threads", "two")),
    study("flag-jobs-zero", ["--jobs", "'0'", ">= 1"], flags=("--jobs", "0")),
    study("flag-jobs-text", ["--jobs", "'two'", "integer"], flags=("--jobs", "two")),
    study(
        "flag-tracking-unreachable",
        ["--tracking-uri", "'http://127.0.0.1:9'", "cannot reach", "mlflow server", "--no-tracking"],
        flags=("--tracking-uri", "http://127.0.0.1:9"),
    ),
    study(
        "flag-tracking-password-masked",
        ["--tracking-uri", "'http://bob:***@127.0.0.1:9'", "cannot reach"],
        flags=("--tracking-uri", "http://bob:hunter2@127.0.0.1:9"),
    ),
    study(
        "flag-tracking-scheme",
        ["--tracking-uri", "'ftp://host'", "sqlite:///mlflow.db", "http(s)://"],
        flags=("--tracking-uri", "ftp://host"),
    ),
    study(
        "flag-tracking-file-store", ["--tracking-uri", "'./mlruns'", "allowed"], flags=("--tracking-uri", "./mlruns")
    ),
    study(
        "flag-tracking-sqlite-no-folder",
        ["--tracking-uri", "'sqlite:///nodir/m.db'", "'nodir'", "writable folder"],
        flags=("--tracking-uri", "sqlite:///nodir/m.db"),
    ),
    # --- tuner sync --------------------------------------------------------------------------------
    case("sync-unknown-experiment", ["sync", "nosuch"], ["'nosuch'", "quickstart"]),
    case(
        "sync-storage-missing",
        ["sync", "quickstart", "--storage", "sqlite:///missing.db"],
        ["--storage", "'sqlite:///missing.db'", "does not exist"],
    ),
    case(
        "sync-tracking-unreachable",
        ["sync", "quickstart", "--tracking-uri", "http://127.0.0.1:9"],
        ["--tracking-uri", "cannot reach"],
    ),
    study("flag-target-nan", ["--target", "'nan'", "finite"], flags=("--target", "nan")),
    # --- tuner plot --------------------------------------------------------------------------------
    case(
        "plot-storage-missing",
        ["plot", "--experiment", "t", "--storage", "sqlite:///t.db"],
        ["--storage", "t.db", "does not exist"],
    ),
    case(
        "plot-exp-target-text",
        ["plot", "exp.yaml"],
        ["exp.yaml", "target", "'high'", "finite number"],
        {"exp.yaml": experiment(target="high")},
    ),
    # --- tuner train -------------------------------------------------------------------------------
    case("train-file-missing", ["train", "missing.yaml"], ["missing.yaml", "No such file"]),
    case(
        "train-format-2", ["train", "cfg.yaml"], ["cfg.yaml", "format", "2", "format 1"], {"cfg.yaml": config(format=2)}
    ),
    case("train-seeds-zero", ["train", "cfg.yaml", "--seeds", "0"], ["--seeds", "'0'", ">= 1"], {"cfg.yaml": config()}),
    case(
        "train-unknown-optimizer-class",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "optimizer.class", "Adadelta", "torch.optim.Adam"],
        {"cfg.yaml": config(optimizer={"class": "torch.optim.Adadelta"})},
    ),
    case(
        "train-unknown-schedule",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "schedule.name", "'warmup'", "cosine"],
        {"cfg.yaml": config(schedule={"name": "warmup"})},
    ),
    case(
        "train-missing-section",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "training", "missing"],
        {"cfg.yaml": yaml.safe_dump({k: v for k, v in BASE_CONFIG.items() if k != "training"})},
    ),
    case(
        "train-negative-lr",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "lr", "-1.0", ">= 0"],
        {"cfg.yaml": config(optimizer={"kwargs": {"lr": -1.0}})},
    ),
    case(
        "train-unknown-kwarg",
        ["train", "cfg.yaml"],
        ["cfg.yaml: optimizer.kwargs: unknown key 'lrr'", "0.1", "allowed: lr, betas, eps, weight_decay"],
        {"cfg.yaml": config(optimizer={"kwargs": {"lrr": 0.1}})},
    ),
    case(  # a misspelt key in an exported file: tuner's line, not torch's TypeError
        "train-misspelt-kwarg",
        ["train", "cfg.yaml"],
        ["cfg.yaml: optimizer.kwargs: unknown key 'learning_rate'", "0.01", "allowed: lr, betas"],
        {"cfg.yaml": config().replace("    lr: 0.01", "    learning_rate: 0.01")},
    ),
    case(
        "train-misspelt-training-key",
        ["train", "cfg.yaml"],
        ["cfg.yaml: training: unknown key 'sede'", "0", "allowed: task,", "seed"],
        {"cfg.yaml": config().replace("  seed: 0", "  sede: 0")},
    ),
    case(
        "train-misspelt-schedule-key",
        ["train", "cfg.yaml"],
        ["cfg.yaml: schedule: unknown key 'intervall'", "'step'", "allowed: name, interval, params"],
        {"cfg.yaml": config().replace("  interval: step", "  intervall: step")},
    ),
    case(
        "train-misspelt-schedule-param",
        ["train", "cfg.yaml"],
        ["cfg.yaml: schedule.params of cosine: unknown key 'etamin'", "0.1", "allowed: eta_min"],
        {"cfg.yaml": config(schedule={"params": {"etamin": 0.1}})},
    ),
    case(
        "train-unknown-top-key",
        ["train", "cfg.yaml"],
        ["cfg.yaml: unknown key 'optimiser'", "allowed: format, optimizer, schedule, training, metrics, source"],
        {"cfg.yaml": config().replace("optimizer:", "optimiser:")},
    ),
    case(
        "train-schedule-missing-param",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "step", "step_size"],
        {"cfg.yaml": config(schedule={"name": "step", "params": {}})},
    ),
    case(
        "train-kwargs-not-a-mapping",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "optimizer.kwargs", "'lr'", "mapping"],
        {"cfg.yaml": config(optimizer={"class": "torch.optim.Adam", "kwargs": "lr"})},
    ),
    case(
        "train-one-cycle-div-zero",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "schedule.params", "one_cycle", "div"],
        {"cfg.yaml": config(schedule={"name": "one_cycle", "params": {"div_factor": 0.0}})},
    ),
    case(
        "train-exponential-negative",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "schedule.params", "exponential", "end_factor"],
        {"cfg.yaml": config(schedule={"name": "exponential", "params": {"end_factor": -0.5}})},
    ),
    case(
        "train-constant-with-params",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "'gamma'", "constant", "none"],
        {"cfg.yaml": config(schedule={"name": "constant", "params": {"gamma": 0.5}})},
    ),
    case(
        "train-interval-epoch",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "schedule.interval", "'epoch'", "step"],
        {"cfg.yaml": config(schedule={"interval": "epoch"})},
    ),
    case(
        "train-seed-text",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "training.seed", "'abc'", "from 0 to"],
        {"cfg.yaml": config(training=BASE_CONFIG["training"] | {"seed": "abc"})},
    ),
    case(
        "train-task-not-text",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "training.task", "3", "task name"],
        {"cfg.yaml": config(training=BASE_CONFIG["training"] | {"task": 3})},
    ),
    case(
        "train-amp-flag-on-cpu",
        ["train", "cfg.yaml", "--device", "cpu", "--amp", "bf16"],
        ["--amp", "'bf16'", "CUDA"],
        {"cfg.yaml": config()},
    ),
    case(
        "train-amp-in-config-on-cpu",
        ["train", "cfg.yaml", "--device", "cpu"],
        ["cfg.yaml: training.amp", "'bf16'", "--amp none"],
        {"cfg.yaml": config(training=BASE_CONFIG["training"] | {"amp": "bf16"})},
    ),
    case(
        "train-amp-unknown",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "training.amp", "'fp16'", "none, bf16"],
        {"cfg.yaml": config(training=BASE_CONFIG["training"] | {"amp": "fp16"})},
    ),
    case(
        "train-duplicate-key",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "'lr'", "twice", "line"],
        {"cfg.yaml": config().replace("    lr: 0.01\n", "    lr: 0.01\n    lr: 1.0\n")},
    ),
    case(
        "train-lr-yes",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "line", "'yes'", "YAML 1.1 boolean"],
        {"cfg.yaml": config().replace("lr: 0.01", "lr: yes")},
    ),
    case(
        "train-lr-true",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "optimizer.kwargs.lr", "True", "a float"],
        {"cfg.yaml": config(optimizer={"kwargs": {"lr": True}})},
    ),
    case(
        "train-lr-text",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "optimizer.kwargs.lr", "'1e-3'", "YAML reads this as text"],
        {"cfg.yaml": config(optimizer={"kwargs": {"lr": "1e-3"}})},
    ),
    case(
        "train-beta-bool",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "optimizer.kwargs.betas[0]", "False", "a float"],
        {"cfg.yaml": config(optimizer={"kwargs": {"lr": 0.01, "betas": [False, 0.999]}})},
    ),
    case(
        "train-amsgrad-number",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "optimizer.kwargs.amsgrad", "1", "a bool"],
        {"cfg.yaml": config(optimizer={"kwargs": {"lr": 0.01, "amsgrad": 1}})},
    ),
    case(
        "train-first-seed-negative",
        ["train", "cfg.yaml", "--first-seed", "-1"],
        ["--first-seed", "'-1'", ">= 0"],
        {"cfg.yaml": config()},
    ),
    case(
        "train-first-seed-too-large",
        ["train", "cfg.yaml", "--first-seed", str(2**31 - 2), "--seeds", "3"],
        ["--first-seed 2147483646", "--seeds 3", "2147483648", "at most 2147483647"],
        {"cfg.yaml": config()},
    ),
    case(
        "train-threads-zero",
        ["train", "cfg.yaml", "--threads", "0"],
        ["--threads", "'0'", ">= 1"],
        {"cfg.yaml": config()},
    ),
    case(
        "train-epochs-zero",
        ["train", "cfg.yaml"],
        ["cfg.yaml", "epochs", "0", ">= 1"],
        {"cfg.yaml": config(training=BASE_CONFIG["training"] | {"epochs": 0})},
    ),
]

STUDY_FLAGS = ("--storage", "--out", "--no-progress")


def full_argv(argv: list[str], tmp_path: Path) -> list[str]:
    """``argv`` plus this test's storage and output folder (``tuner study`` only; a case's own flags win)."""
    if argv[0] != "study":
        return argv
    extra = {"--storage": f"sqlite:///{tmp_path}/t.db", "--out": str(tmp_path / "out"), "--no-progress": None}
    added = []
    for flag, value in extra.items():
        if flag not in argv:
            added += [flag] if value is None else [flag, value]
    return [*argv, *added]


def write_files(tmp_path: Path, files: dict[str, str | bytes]) -> None:
    for name, text in files.items():
        path = tmp_path / name
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)


def check(rc: object, out: str, err: str, expect: list[str], tmp_path: Path, before: set[str]) -> None:
    shown = f"exit code {rc!r}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in out + err, shown
    assert rc == 2, shown
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), shown
    assert "error:" in lines[0], shown
    for text in expect:
        assert text in lines[0], f"{text!r} missing from the message\n{shown}"
    assert out == "", shown
    assert not (tmp_path / "t.db").exists(), "the storage was created before the input was found bad\n" + shown
    assert not (tmp_path / "out").exists(), shown
    created = {p.name for p in tmp_path.iterdir()} - before
    assert not created, f"created {sorted(created)}\n{shown}"


@pytest.mark.parametrize(("argv", "files", "expect"), CASES)
def test_bad_input_is_one_line_exit_2_and_creates_nothing(argv, files, expect, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    write_files(tmp_path, files)
    before = {p.name for p in tmp_path.iterdir()}
    try:
        rc: object = main(full_argv(argv, tmp_path))
    except SystemExit as exit:  # argparse's errors
        rc = exit.code
    except Exception:  # what a real run would print as a traceback with exit code 1
        traceback.print_exc()
        rc = 1
    captured = capsys.readouterr()
    check(rc, captured.out, captured.err, expect, tmp_path, before)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["study", "--trials", "0"], "--trials: '0' is not allowed (an integer >= 1)"),
        (["study", "--epochs", "abc"], "--epochs: 'abc' is not allowed (an integer >= 1)"),
        (["study", "--trials"], "--trials: no value given (allowed: an integer >= 1)"),
        (["train", "cfg.yaml", "--first-seed", "-2"], "--first-seed: '-2' is not allowed (an integer >= 0)"),
        (["plot", "--importance", "shap"], "--importance: 'shap' is not allowed (allowed: ped-anova, fanova, mdi)"),
        (["stdy"], "command: 'stdy' is not allowed (allowed: study, plot, evidence, train, sync, tasks)"),
        ([], "command: missing (allowed: study, plot, evidence, train, sync, tasks)"),
        (["train"], "config: missing (allowed: best-config YAML written by `tuner study`)"),
        (["study", "--tr", "3"], "--tr: ambiguous, an abbreviation of several options (allowed: one of --trials, "),
        (["study", "--trails", "3"], "--trails: unknown option of tuner study (allowed: --help, --trials, --epochs, "),
        (["study", "a.yaml", "b.yaml"], "'b.yaml': an argument too many for tuner study (allowed: experiment, then "),
        (["tasks", "all"], "'all': an argument too many for tuner tasks (allowed: options only)"),
    ],
)
def test_argparses_errors_read_as_tuners_own(argv, line, capsys):
    """A bad flag gets the line any bad input gets: ``tuner: error: FLAG: VALUE is not allowed (ALLOWED)``."""
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith(f"tuner: error: {line}") and err.count("\n") == 1, err


# A few cases again in a real process: the exit code, and nothing else on stderr (warnings included).
PROCESS_CASES = ["flag-storage-bad-url", "flag-trials-zero"]


@pytest.mark.parametrize(("argv", "files", "expect"), [p for p in CASES if p.id in PROCESS_CASES])
def test_bad_input_in_a_real_process(argv, files, expect, tmp_path):
    write_files(tmp_path, files)
    before = {p.name for p in tmp_path.iterdir()}
    env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "tuner", *full_argv(argv, tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    check(result.returncode, result.stdout, result.stderr, expect, tmp_path, before)


def test_the_valid_files_the_cases_start_from_are_accepted(tmp_path, monkeypatch):
    """Each case changes one thing in these; they must pass on their own."""
    monkeypatch.chdir(tmp_path)
    write_files(
        tmp_path,
        {
            "exp.yaml": experiment(),
            "space.yaml": adam_space("lr: {low: 1.0e-5, high: 1.0, scale: log}", "beta1: 0.9"),
            "exp2.yaml": experiment(optimizers=["space.yaml"]),
            "cfg.yaml": config(),
        },
    )
    assert [s.name for s in load_experiment(Path("exp.yaml")).optimizers] == ["adam"]
    assert load_experiment(Path("exp2.yaml")).optimizers[0].optimizer == "Adam"
    assert load_space(Path("space.yaml")).params[0].scale == "log"
    assert load_config(Path("cfg.yaml")).optimizer == "Adam"


def test_the_python_loader_refuses_a_misspelt_key_with_the_clis_line(tmp_path):
    import tuner
    from tuner.errors import UserError

    path = tmp_path / "best.yaml"
    path.write_text(config().replace("    lr: 0.01", "    learning_rate: 0.01"))
    with pytest.raises(UserError) as error:
        tuner.load_config(path)
    assert str(error.value) == (
        f"{path}: optimizer.kwargs: unknown key 'learning_rate' (value 0.01; allowed: lr, betas, eps, weight_decay, "
        "amsgrad, decoupled_weight_decay)"
    )


@pytest.mark.parametrize("kind", ["search_spaces", "experiments"])
def test_every_shipped_file_reads_as_it_says(kind):
    """The shipped files pass the strict loader: no duplicate key, no yes/no/on/off, no octal or base-60 number."""
    from tuner.config.files import read_yaml, shipped_dir

    files = sorted(shipped_dir(kind).glob("*.yaml"))
    assert files
    for path in files:
        assert read_yaml(path, kind)


def test_strict_yaml_reads_the_unambiguous_forms_as_pyyaml_does():
    from tuner.config import strict_yaml

    text = "a: true\nb: False\nc: 'yes'\nd: 10\ne: 1.0e-3\nf: 0\ng: 0.5\nh: -3\ni: 1_000\nbase: &b {x: 1}\nmerged: {<<: *b, x: 2}\n"
    assert strict_yaml.load(text) == yaml.safe_load(text)
