"""Names a downstream store refuses (mapped to a documented form, or refused up front: tests/test_validation.py), and what is
printed to be pasted or clicked (shell-quoted commands, percent-encoded links), with paths that hold spaces and non-ASCII letters.
Real Optuna storages and MLflow stores in temporary folders.
"""

from __future__ import annotations

import argparse
import re
import shlex
from urllib.parse import unquote

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from tuner.cli.main import main
from tuner.run.experiment import sync_command
from tuner.tracking.mirror import Mirror
from tuner.tracking.records import RunRecord, mlflow_key

TASK = """
from dataclasses import dataclass
import torch
from torch import nn
from torch.nn import functional as F
from tuner.tasks.task import Data, Split, generated


@dataclass
class Tiny:
    metric: str = "mae@1"
    name: str = "tiny"
    direction: str = "minimize"
    epochs: int = 1
    batch_size: int = 16

    def data(self) -> Data:
        def sample(n, g):
            x = torch.randn(n, 4, generator=g)
            return Split(x, x.sum(1, keepdim=True))
        return generated(sample, (32, 16, 16), seed=0)

    def model(self) -> nn.Module:
        return nn.Linear(4, 1)

    def loss(self, output, target):
        return F.mse_loss(output, target)

    def score(self, output, target):
        return (output - target).abs().mean().item()
"""

EXPERIMENT = """name: "metric at"
task: at_metric:Tiny
optimizers: ["my späce.yaml"]
schedules: [constant]
trials: 2
epochs: 2
seed: 0
final_seeds: 1
pruner: none
"""


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("val_mae@1", "val_mae_1"),
        ("val_a/b", "val_a_b"),
        ("val_a:b", "val_a_b"),
        ("val_top-1 acc.", "val_top-1 acc."),
        ("val_précision", "val_précision"),
        ("test_../x", "test_.._x"),
    ],
)
def test_mlflow_key_keeps_what_mlflow_allows_everywhere_and_maps_the_rest_to_underscore(name, key):
    assert mlflow_key(name) == key


def test_a_metric_name_mlflow_refuses_is_logged_under_its_mapped_key_and_sync_has_nothing_to_do(
    tmp_path, monkeypatch, capsys
):
    """Case 01 (a metric named ``mae@1``), in a folder with a space, as in case 06: the printed command and links work."""
    tmp_path = tmp_path / "my folder"
    tmp_path.mkdir()
    (tmp_path / "at_metric.py").write_text(TASK)
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    (tmp_path / "my späce.yaml").write_text("optimizer: SGD\nparams:\n  lr: {low: 1.0e-3, high: 1.0e-1, scale: log}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    uri = f"sqlite:///{tmp_path}/ml flow.db"
    common = ["--storage", f"sqlite:///{tmp_path}/t.db", "--tracking-uri", uri]
    assert main(["study", "exp.yaml", *common, "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "incomplete" not in err and "tracking: 3 runs" in err, err
    browse = re.search(r"\(browse: (.*)\)$", err, re.MULTILINE).group(1)
    assert shlex.split(browse) == ["mlflow", "ui", "--backend-store-uri", uri]
    links = re.findall(r"\]\(([^)]*)\)", (tmp_path / "out" / "summary.md").read_text())
    assert "best-my%20sp%C3%A4ce.yaml" in links
    for link in links:  # CommonMark ends an unbracketed link target at a space
        assert " " not in link and (tmp_path / "out" / unquote(link)).is_file(), link

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("metric at")
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    children = [r for r in runs if r.data.tags.get("tuner.role") in ("trial", "final")]
    assert len(children) == 3
    for run in children:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mae_1")] == [1, 2]
    final = next(r for r in children if r.data.tags["tuner.role"] == "final")
    assert "test_mae_1" in final.data.metrics

    assert main(["sync", "exp.yaml", *common]) == 0
    assert "0 runs written, 3 already there, 0 deleted" in capsys.readouterr().out


def test_a_run_the_store_refuses_is_deleted_not_left_running(tmp_path):
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/t.db")
    optuna.create_study(study_name="e/adam", storage=storage).set_user_attr("uid", "u1")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mirror = Mirror(uri, "e", storage, f"sqlite:///{tmp_path}/t.db", "test")
    refused = RunRecord(
        key="trial/0",
        name="adam-0",
        status="FINISHED",
        start_ms=1,
        end_ms=2,
        params={"x" * 300: "1"},
        tags={"tuner.role": "trial", "tuner.trial": "0"},
    )
    with pytest.raises(MlflowException):
        mirror.write("e/adam", refused)
    client = MlflowClient(uri)
    runs = client.search_runs([mirror.experiment_id], run_view_type=ViewType.ALL)
    children = [r for r in runs if r.data.tags.get("tuner.role") == "trial"]
    assert [(r.info.status, r.info.lifecycle_stage) for r in children] == [("RUNNING", "deleted")]
    assert client.search_runs([mirror.experiment_id], filter_string="tags.`tuner.role` = 'trial'") == []


def test_the_printed_sync_command_pastes_into_a_shell_as_the_arguments_it_names():
    args = argparse.Namespace(experiment="my exp.yaml", storage="sqlite:////home/a b/d b.db")
    command = sync_command(args, "http://bob:secret@host:5000/it's")
    assert shlex.split(command) == [
        "python",
        "-m",
        "tuner",
        "sync",
        "my exp.yaml",
        "--storage",
        "sqlite:////home/a b/d b.db",
        "--tracking-uri",
        "http://bob:***@host:5000/it's",
    ]
