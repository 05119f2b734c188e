"""What an MLflow run holds, as plain data built from the Optuna storage (no MLflow here).

Layout in the tracking store (``--tracking-uri``, default ``sqlite:///mlflow.db``):

- one MLflow **experiment** per tuner experiment, named like it;
- one **parent run** per Optuna study (one per optimizer), named after the
  optimizer. Tags: ``tuner.role`` = ``study``, ``tuner.study`` (the Optuna study
  name), ``tuner.study_uid``, ``tuner.storage`` (without its password),
  ``tuner.version``. Params: the study's setup (task, epochs, batch size, seed,
  objective, direction, ...). Artifacts: the best-config YAML files and the
  summary (and the plots);
- one nested **child run per trial**, named ``<optimizer>-<trial number>``.
  Params: the ``torch.optim`` keyword arguments as named by torch (``betas`` also
  as ``beta1`` and ``beta2``, so that charts can use them), ``schedule`` and
  ``schedule.<param>``, ``task``, ``task_args.<arg>``, ``epochs``,
  ``batch_size``, ``seed``, ``objective``, ``device``. Metrics with ``step`` =
  epoch: ``train_loss``, ``val_loss``, ``val_<metric>`` (``val_accuracy``) and
  ``lr`` (the learning rate of the epoch's last step), timestamped with the
  epoch's wall-clock time; then ``objective`` (the trial's value, complete
  trials only). Metric and param keys pass through :func:`mlflow_key`
  (``val_mae@1`` -> ``val_mae_1``). Tags: ``tuner.role`` = ``trial``, ``tuner.study``,
  ``tuner.trial`` (the Optuna trial number), ``tuner.outcome``, ``tuner.reason``
  and, for a failed trial, ``tuner.traceback``;
- one nested **child run per final-evaluation seed**, named
  ``<optimizer>-final-seed-<seed>``: the best config's params (with that seed),
  the same per-epoch metrics, ``test_<objective>`` and ``test_<metric>``, and the
  step sizes (``step_size/<tensor>/lr_p<q>``, ``.../ratio_p<q>``, step = optimizer step). Tags:
  ``tuner.role`` = ``final``, ``tuner.trial`` (the trial whose config it is),
  ``tuner.seed``.

MLflow run status:

=========== ============= ==================================================
outcome     MLflow status why
=========== ============= ==================================================
complete    FINISHED      trained every epoch
pruned      FINISHED      stopped on purpose, by the pruner (tag ``tuner.outcome``)
diverged    FAILED        the loss or metric became NaN or infinite
failed      FAILED        the task's code raised (``tuner.traceback``)
interrupted KILLED        Ctrl-C
=========== ============= ==================================================
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from tuner.study.outcomes import outcome

# A pruned trial ended as tuning meant it to (Optuna's MLflowCallback logs it FINISHED too): the MLflow UI draws
# FAILED and KILLED alike as a red failure. ``tuner.outcome`` tells pruned from complete.
STATUS = {
    "complete": "FINISHED",
    "pruned": "FINISHED",
    "diverged": "FAILED",
    "failed": "FAILED",
    "interrupted": "KILLED",
}
TRACEBACK_CHARS = 4000
_KEY_REFUSED = re.compile(r"[^\w.\- ]")


@dataclass
class RunRecord:
    """One MLflow child run, ready to write. ``key`` makes it unique within its parent."""

    key: str
    name: str
    status: str
    start_ms: int
    end_ms: int
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, step, timestamp (ms)


def ms(moment: datetime | None) -> int:
    """``moment`` (None: now) in milliseconds since the epoch, as MLflow stores times."""
    return int((moment or datetime.now()).timestamp() * 1000)


def config_params(config: dict[str, Any], device: str) -> dict[str, str]:
    """A trial's hyperparameters as MLflow params, from its exported config."""
    optimizer, schedule, training = config.get("optimizer", {}), config.get("schedule", {}), config.get("training", {})
    params: dict[str, Any] = {"optimizer": str(optimizer.get("class", "")).removeprefix("torch.optim.")}
    for name, value in optimizer.get("kwargs", {}).items():
        params[name] = tuple(value) if isinstance(value, list) else value
        if name == "betas":
            params["beta1"], params["beta2"] = value
    params["schedule"] = schedule.get("name")
    params |= {f"schedule.{k}": v for k, v in schedule.get("params", {}).items()}
    params |= {k: v for k, v in training.items() if k != "task_args"}
    params |= {f"task_args.{k}": v for k, v in (training.get("task_args") or {}).items()}
    params["device"] = device
    return {mlflow_key(k): str(v) for k, v in params.items()}


def mlflow_key(name: str) -> str:
    """``name`` as an MLflow metric or param key: every character outside letters, digits, ``_ - .`` and space becomes
    ``_`` (``val_mae@1`` -> ``val_mae_1``). MLflow refuses other characters in keys (``:`` on Windows servers, ``/``
    where the key would resolve to another path), and a run that cannot be written would leave a gap in the mirror."""
    return _KEY_REFUSED.sub("_", name)


def metric_names(metric: str) -> dict[str, str]:
    """History column -> MLflow metric name; a task whose metric is its loss logs it once."""
    names = {"train_loss": "train_loss", "val_loss": "val_loss", "val_metric": mlflow_key(f"val_{metric}"), "lr": "lr"}
    if metric == "loss":
        del names["val_metric"]
    return names


def epoch_metrics(history: dict[str, list[float]], metric: str, start_ms: int) -> list[tuple[str, float, int, int]]:
    """Per-epoch metrics with ``step`` = epoch, each timestamped when its epoch ended."""
    epochs = history.get("epoch", [])
    seconds = history.get("seconds") or [0.0] * len(epochs)
    return [
        (name, float(history[column][i]), int(epoch), start_ms + round(seconds[i] * 1000))
        for i, epoch in enumerate(epochs)
        for column, name in metric_names(metric).items()
    ]


def trial_record(study: str, optimizer: str, metric: str, trial: FrozenTrial) -> RunRecord:
    """The child run of one finished trial."""
    state = outcome(trial)
    attrs = trial.user_attrs
    start, end = ms(trial.datetime_start), ms(trial.datetime_complete)
    metrics = epoch_metrics(attrs.get("history") or {}, metric, start)
    if trial.state == TrialState.COMPLETE:
        assert trial.value is not None  # Optuna stores a complete trial with its value
        metrics.append(("objective", float(trial.value), max(trial.intermediate_values, default=0), end))
    tags = {"tuner.role": "trial", "tuner.study": study, "tuner.trial": str(trial.number), "tuner.outcome": state}
    if attrs.get("reason"):
        tags["tuner.reason"] = str(attrs["reason"])[:TRACEBACK_CHARS]
    if attrs.get("traceback"):
        tags["tuner.traceback"] = str(attrs["traceback"])[-TRACEBACK_CHARS:]
    return RunRecord(
        key=f"trial/{trial.number}",
        name=f"{optimizer}-{trial.number}",
        status=STATUS[state],
        start_ms=start,
        end_ms=end,
        params=config_params(attrs.get("config") or {}, attrs.get("device", "unknown")),
        tags=tags,
        metrics=metrics,
    )


def step_size_metrics(record: dict[str, Any]) -> list[tuple[str, float, int]]:
    """A final run's step sizes (:meth:`tuner.measure.step_sizes.StepSizes.result`) as metrics ``(name, value, step)``:
    ``step_size/<tensor>/lr_p<q>`` (effective learning rate) and ``step_size/<tensor>/ratio_p<q>`` (|Δθ|/|g|)
    at each recorded optimizer step; undefined (NaN) values left out."""
    points = []
    for kind, prefix in (("effective_lr", "lr"), ("ratio", "ratio")):
        for tensor, rows in record[kind].items():
            for step, row in zip(record["steps"], rows):
                points += [
                    (f"step_size/{tensor}/{prefix}_p{q}", v, step)
                    for q, v in zip(record["percentiles"], row)
                    if math.isfinite(v)
                ]
    return points


def final_records(
    study: str, optimizer: str, setup: dict[str, Any], final: dict[str, Any], trial: FrozenTrial
) -> list[RunRecord]:
    """The child runs of the final evaluation: the best config re-trained on each final seed."""
    config = trial.user_attrs.get("config") or {}
    label = "loss" if setup.get("objective") == "loss" else setup.get("metric", "metric")
    records = []
    for i, seed in enumerate(final["seeds"]):
        history = final["history"][i]
        start = round(1000 * final["started"][i]) if "started" in final else ms(None)
        end = start + round(1000 * (history.get("seconds") or [0.0])[-1])
        metrics = epoch_metrics(history, setup.get("metric", "metric"), start)
        last = history["epoch"][-1] if history.get("epoch") else 0
        metrics += [(mlflow_key(f"test_{label}"), final["test_objective"][i], last, end)]
        if label != setup.get("metric"):
            metrics += [(mlflow_key(f"test_{setup.get('metric')}"), final["test_metric"][i], last, end)]
        if final.get("step_sizes"):
            metrics += [(name, value, step, end) for name, value, step in step_size_metrics(final["step_sizes"][i])]
        seeded = config | {"training": config.get("training", {}) | {"seed": seed}}
        records.append(
            RunRecord(
                key=f"final/{final['trial']}/{seed}",
                name=f"{optimizer}-final-seed-{seed}",
                status="FINISHED" if final["status"][i] == "complete" else "FAILED",
                start_ms=start,
                end_ms=end,
                params=config_params(seeded, trial.user_attrs.get("device", "unknown")),
                tags={
                    "tuner.role": "final",
                    "tuner.study": study,
                    "tuner.trial": str(final["trial"]),
                    "tuner.seed": str(seed),
                    "tuner.outcome": final["status"][i],
                },
                metrics=metrics,
            )
        )
    return records


def record_key(tags: dict[str, str]) -> str:
    """The key of an existing child run, from its tags (the inverse of the records' keys)."""
    if tags.get("tuner.role") == "final":
        return f"final/{tags.get('tuner.trial')}/{tags.get('tuner.seed')}"
    return f"trial/{tags.get('tuner.trial')}"
