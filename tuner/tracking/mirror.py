"""MLflow glue: the tracking store mirrors the Optuna storage, which stays the source of truth.

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

A parent run is RUNNING while ``tuner study`` works on its study, FINISHED
when the study reached its budget and its best config is exported, KILLED
when the command was interrupted. A resumed study logs under the same parent
run: parents are found by the study's ``uid`` user attribute, so a study
deleted and created again gets a new parent.

Recovery: a child run is written in three calls (created RUNNING, its params,
metrics and tags in batches, terminated with its status). One found RUNNING
was cut short: it is deleted and written again. :meth:`Mirror.sync` does this
for a whole study, idempotently, from the Optuna storage alone (``tuner sync``).

During ``tuner study`` the mirroring is done by a follower process
(``python -m tuner.tracking.mirror``, see :class:`Follower`), so that the training
process never imports MLflow nor waits for it: the training process writes
one JSON line per stored trial to the follower's stdin. The follower ignores
Ctrl-C, and when its stdin closes, however the training process ended (even
by kill -9), it syncs every study once more and exits.

This module imports only the standard library and Optuna at the top; MLflow
is imported where it is used, in the follower or ``tuner sync``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import UserError, mask_url, reason, sqlite_file, url_failure
from tuner.study.outcomes import FINISHED, outcome

DEFAULT_URI = "sqlite:///mlflow.db"
# A pruned trial ended as tuning meant it to (Optuna's MLflowCallback logs it FINISHED too): the MLflow UI draws
# FAILED and KILLED alike as a red failure. ``tuner.outcome`` tells pruned from complete.
STATUS = {
    "complete": "FINISHED",
    "pruned": "FINISHED",
    "diverged": "FAILED",
    "failed": "FAILED",
    "interrupted": "KILLED",
}
# The MLflow 3 UI opens an experiment without this tag in its GenAI (traces) view; tuner's runs are model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# Per-epoch columns of a stored history, and their MLflow metric names.
EPOCH_COLUMNS = ("train_loss", "val_loss", "val_metric", "lr")
# MLflow's limits per log_batch call.
BATCH = {"metrics": 1000, "params": 100, "tags": 100}
TRACEBACK_CHARS = 4000
_KEY_REFUSED = re.compile(r"[^\w.\- ]")
# After a tracking failure the follower leaves the store alone this long (seconds).
RETRY_SECONDS = 30.0
# The follower's HTTP client gives up sooner than MLflow's defaults (7 retries,
# 120 s timeout): a study must not wait minutes at its end for a dead server.
FOLLOWER_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# Set before MLflow is imported: its INFO lines (database creation) would break
# into the progress bars, and it prints each run's URL, with any password in
# the tracking URI, to stdout.
QUIET_ENV = {"MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql")


def tracking_uri(flag: str | None) -> tuple[str, str]:
    """The tracking URI and where it came from: ``--tracking-uri``, then ``MLFLOW_TRACKING_URI``, then the default."""
    if flag:
        return flag, "--tracking-uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    return DEFAULT_URI, "--tracking-uri (default)"


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: ``<folder of the SQLite file>/mlruns/<experiment>`` as a ``file://`` URI.

    Without it MLflow puts them in ``./mlruns`` of whatever the working directory is, away from the database.
    ``None`` (the store's own default) for other stores: a server chooses its artifact root, and a
    PostgreSQL or MySQL database has no folder of its own on this machine.
    """
    if urlsplit(uri).scheme.split("+")[0] != "sqlite":
        return None
    return (Path(sqlite_file(uri)).resolve().parent / "mlruns" / experiment).as_uri()


def check_reachable(uri: str, where: str) -> None:
    """Fail with one line if the tracking store at ``uri`` cannot be used; creates nothing."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    if scheme not in SCHEMES:
        raise UserError(
            f"{where}: {mask_url(uri)!r} is not allowed (allowed: sqlite:///mlflow.db, http(s)://host:port of an "
            "`mlflow server`, or a postgresql:// or mysql:// database; or --no-tracking)"
        )
    if scheme in ("http", "https"):
        import base64
        import urllib.request

        # urllib does not read credentials from a URL; MLflow's client (requests) does.
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        request = urllib.request.Request(parts._replace(netloc=host).geturl().rstrip("/") + "/health")
        if parts.username:
            token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
        except Exception as err:  # URLError, timeouts, HTTP errors, bad hosts
            raise UserError(
                f"{where}: cannot reach the MLflow server at {mask_url(uri)!r}: {url_failure(err, uri)} (start it with `mlflow server`, or pass --no-tracking)"
            ) from None
    elif scheme == "sqlite":
        folder = Path(sqlite_file(uri)).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise UserError(
                f"{where}: {mask_url(uri)!r}: {str(folder)!r} is not a writable folder (allowed: an SQLite file in a writable folder)"
            )
    else:
        import sqlalchemy

        try:
            sqlalchemy.create_engine(uri).connect().close()
        except Exception as err:  # drivers raise their own kinds
            raise UserError(f"{where}: cannot connect to {mask_url(uri)!r}: {url_failure(err, uri)}") from None


# --------------------------------------------------------------------------
# What a run holds: plain data built from the Optuna storage.


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


def _ms(moment: datetime | None) -> int:
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
        (name, float(history[column][i]), epoch, start_ms + round(seconds[i] * 1000))
        for i, epoch in enumerate(epochs)
        for column, name in metric_names(metric).items()
    ]


def trial_record(study: str, optimizer: str, metric: str, trial: FrozenTrial) -> RunRecord:
    """The child run of one finished trial."""
    state = outcome(trial)
    attrs = trial.user_attrs
    start, end = _ms(trial.datetime_start), _ms(trial.datetime_complete)
    metrics = epoch_metrics(attrs.get("history") or {}, metric, start)
    if trial.state == TrialState.COMPLETE:
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
        start = round(1000 * final["started"][i]) if "started" in final else _ms(None)
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


# --------------------------------------------------------------------------
# Writing to MLflow.


@dataclass
class SyncCount:
    """What one sync did: child runs written, found already there, and deleted (cut short or stale)."""

    written: int = 0
    kept: int = 0
    deleted: int = 0

    def __iadd__(self, other: SyncCount) -> SyncCount:
        self.written, self.kept, self.deleted = (
            self.written + other.written,
            self.kept + other.kept,
            self.deleted + other.deleted,
        )
        return self


def _first(run: Any) -> tuple[int, str]:
    """The order in which copies of one run are ranked: the first is kept. Every writer ranks them alike."""
    return run.info.start_time, run.info.run_id


def _finished(runs: list[Any]) -> list[Any]:
    """The finished copies of one run, the one to keep first; a copy left RUNNING was cut short, or is being written."""
    return sorted((run for run in runs if run.info.status != "RUNNING"), key=_first)


class Mirror:
    """The MLflow side: one experiment's parent and child runs, written from Optuna studies.

    Several mirrors may write one study at once (a follower per command, with
    commands on several machines), so each may write a run another has just
    written: :meth:`sync` merges the copies into the first (by :func:`_first`,
    the same for every writer) once it has written, so the last sync of all
    leaves one run per trial and one parent per study.
    """

    def __init__(
        self, uri: str, experiment: str, storage: optuna.storages.BaseStorage, storage_url: str, version: str
    ) -> None:
        for name, value in QUIET_ENV.items():
            os.environ.setdefault(name, value)
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.storage, self.storage_url, self.version = storage, mask_url(storage_url), version
        found = self.client.get_experiment_by_name(experiment)
        if found is not None and found.lifecycle_stage == "deleted":
            raise UserError(
                f"MLflow experiment {experiment!r} in {mask_url(uri)!r} is deleted: restore it (`mlflow experiments restore`) or remove it for good (`mlflow gc`)"
            )
        self.experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(experiment, artifact_location(uri, experiment), tags=EXPERIMENT_KIND)
        )
        if found is not None and not any(
            key in found.tags for key in EXPERIMENT_KIND
        ):  # made by an earlier tuner; a kind the user chose stays
            for key, value in EXPERIMENT_KIND.items():
                self.client.set_experiment_tag(self.experiment_id, key, value)
        self.parents: dict[str, str] = {}  # study name -> parent run id
        self.runs: dict[str, dict[str, str]] = {}  # study name -> record key -> child run id

    def _search(self, filter_string: str) -> Iterator[Any]:
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=filter_string, max_results=1000, page_token=token
            )
            yield from page
            token = page.token
            if not token:
                return

    def _parents(self, study: str) -> tuple[list[Any], str, dict[str, Any]]:
        """The study's parent runs, first first; its uid and user attributes."""
        study_id = self.storage.get_study_id_from_name(study)
        attrs = self.storage.get_study_user_attrs(study_id)
        uid = attrs.get("uid") or str(study_id)
        return (
            sorted(self._search(f"tags.`tuner.study_uid` = '{uid}' and tags.`tuner.role` = 'study'"), key=_first),
            uid,
            attrs,
        )

    def parent(self, study: str, status: str | None = None) -> str:
        """The parent run of ``study`` (created if missing); ``status`` (e.g. RUNNING) is set on it."""
        if study not in self.parents:
            self._adopt(study, *self._parents(study), status)
        if status is not None:
            self._set_status(self.parents[study], status)
        return self.parents[study]

    def _adopt(self, study: str, found: list[Any], uid: str, attrs: dict[str, Any], status: str | None) -> None:
        """Make the first of the ``found`` parent runs this mirror's parent of ``study``, or a new one when none was found
        (left RUNNING when a ``status`` is about to be set, else FINISHED)."""
        if found:
            run_id = found[0].info.run_id
        else:
            optimizer = study.rsplit("/", 1)[-1]
            tags = {
                "tuner.role": "study",
                "tuner.study": study,
                "tuner.study_uid": uid,
                "tuner.storage": self.storage_url,
                "tuner.version": self.version,
            }
            setup = {k: v for k, v in attrs.get("setup", {}).items() if k not in ("space", "schedules")}
            run_id = self._create(
                RunRecord("", optimizer, "RUNNING", _ms(None), 0, {k: str(v) for k, v in setup.items()}, tags)
            )
            if status is None:
                self.client.set_terminated(run_id, "FINISHED")
        self.parents[study] = run_id
        self.runs[study] = {}

    def _set_status(self, run_id: str, status: str) -> None:
        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, status)

    def merge_parents(self, study: str) -> str:
        """The study's first parent run, into which the others move: another mirror may have created one at the same moment."""
        found, uid, attrs = self._parents(study)
        if study not in self.parents:
            self._adopt(study, found, uid, attrs, None)
        used = self.parents[study]
        keep = found[0].info.run_id if found else used
        for other in ({r.info.run_id for r in found} | {used}) - {keep}:
            for child in self._search(f"tags.mlflow.parentRunId = '{other}'"):
                self.client.set_tag(child.info.run_id, "mlflow.parentRunId", keep)
            if any(r.info.run_id == other for r in found):  # `used` may be deleted already, by another mirror
                self.client.delete_run(other)
        self.parents[study] = keep
        return keep

    def _children(self, parent: str) -> dict[str, list[Any]]:
        children: dict[str, list[Any]] = {}
        for run in self._search(f"tags.mlflow.parentRunId = '{parent}'"):
            children.setdefault(record_key(run.data.tags), []).append(run)
        return children

    def _log(
        self,
        run_id: str,
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        metrics: list[tuple[str, float, int, int]] | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        if metrics is None:
            metrics = []
        if tags is None:
            tags = {}
        if params is None:
            params = {}
        params_, tags_ = list(params.items()), list(tags.items())
        while params_ or tags_ or metrics:
            self.client.log_batch(
                run_id,
                metrics=[Metric(k, v, ts, step) for k, v, step, ts in metrics[: BATCH["metrics"]]],
                params=[Param(k, v) for k, v in params_[: BATCH["params"]]],
                tags=[RunTag(k, v) for k, v in tags_[: BATCH["tags"]]],
            )
            params_, tags_, metrics = params_[BATCH["params"] :], tags_[BATCH["tags"] :], metrics[BATCH["metrics"] :]

    def _create(self, record: RunRecord, tags: dict[str, str] | None = None) -> str:
        """A new run of ``record`` (with ``tags`` added), left RUNNING; one the store refuses to complete is deleted, not left RUNNING."""
        run = self.client.create_run(
            self.experiment_id, start_time=record.start_ms, tags=record.tags | (tags or {}), run_name=record.name
        )
        try:
            self._log(run.info.run_id, params=record.params, metrics=record.metrics)
        except BaseException:
            self.client.delete_run(run.info.run_id)
            raise
        return run.info.run_id

    def write(self, study: str, record: RunRecord, existing: list[Any] | None = None) -> SyncCount:
        """Write ``record`` under the study's parent unless a finished copy is already there; remove the rest."""
        if existing is None and record.key in self.runs.get(study, {}):
            return SyncCount(kept=1)
        parent = self.parent(study)
        existing = existing or []
        # The first finished copy is kept (two writers at once); one left RUNNING was cut short.
        done = _finished(existing)
        count = SyncCount()
        for run in existing:
            if not done or run is not done[0]:
                self.client.delete_run(run.info.run_id)
                count.deleted += 1
        if done:
            self.runs[study][record.key] = done[0].info.run_id
            count.kept += 1
            return count
        run_id = self._create(record, {"mlflow.parentRunId": parent})
        self.client.set_terminated(run_id, record.status, end_time=record.end_ms)
        self.runs[study][record.key] = run_id
        count.written += 1
        return count

    def records(self, study: str, trials: list[FrozenTrial] | None = None) -> list[RunRecord]:
        """The child runs that ``study`` should have (``trials``: only these; default every finished trial and the final runs)."""
        study_id = self.storage.get_study_id_from_name(study)
        attrs = self.storage.get_study_user_attrs(study_id)
        setup = attrs.get("setup", {})
        optimizer, metric = study.rsplit("/", 1)[-1], setup.get("metric", "metric")
        every = trials is None
        if every:
            # A trial without an outcome is a budget slot lost with its worker (tuner.study.storage): nothing trained to an end.
            trials = [
                t
                for t in self.storage.get_all_trials(study_id, deepcopy=False, states=FINISHED)
                if "outcome" in t.user_attrs
            ]
        records = [trial_record(study, optimizer, metric, t) for t in trials]
        final = attrs.get("final")
        if every and final:
            best = self.storage.get_trial(
                self.storage.get_trial_id_from_study_id_trial_number(study_id, final["trial"])
            )
            records += final_records(study, optimizer, setup, final, best)
        return records

    def sync(self, study: str) -> SyncCount:
        """Make the study's child runs match the Optuna storage: one per finished trial and final seed, none RUNNING."""
        parent = self.merge_parents(study)
        existing = self._children(parent)
        self.runs[study] = {}
        count = SyncCount()
        for record in self.records(study):
            count += self.write(study, record, existing.pop(record.key, []))
        for runs in existing.values():  # final runs of an earlier best config, or of no trial any more
            for run in runs:
                self.client.delete_run(run.info.run_id)
                count.deleted += 1
        # What another mirror wrote meanwhile: the first finished copy of each run stays.
        for key, runs in self._children(parent).items():
            done = _finished(runs)
            for run in done[1:]:
                self.client.delete_run(run.info.run_id)
                count.deleted += 1
            if done and key in self.runs[study]:
                self.runs[study][key] = done[0].info.run_id
        return count

    def settle(self, study: str) -> None:
        """A parent run left RUNNING by a command that could not close it: FINISHED if its study got to
        its final evaluation, else KILLED."""
        parent = self.parent(study)
        if self.client.get_run(parent).info.status == "RUNNING":
            final = self.storage.get_study_user_attrs(self.storage.get_study_id_from_name(study)).get("final")
            self.client.set_terminated(parent, "FINISHED" if final else "KILLED")

    def attach(self, study: str, files: list[tuple[str, str]]) -> None:
        """Log files as artifacts of the study's parent run: (local path, artifact folder, "" for the top)."""
        for path, folder in files:
            self.client.log_artifact(self.parent(study), path, artifact_path=folder or None)


# --------------------------------------------------------------------------
# The follower process and the training process's handle on it.


class Follower:
    """The training process's end of the follower: tells it what was stored; waits for it only at the end.

    Messages are JSON lines: ``start`` (where to read and write), ``trial`` (a
    stored trial's id), ``runs`` (answered with the study's trial number -> run
    id), ``attach`` (files for the parent run), ``end`` (the parent run's final
    status). If the follower dies, the study goes on and :meth:`close` says so.
    """

    def __init__(self, uri: str, storage_url: str, experiment: str, studies: list[str], version: str) -> None:
        # Its own session: Ctrl-C in the terminal reaches the training process
        # only, which closes the pipe; the follower finishes the mirror and exits.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tuner.tracking.mirror"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=FOLLOWER_ENV | dict(os.environ),
            start_new_session=True,
        )
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        # The storage URL may hold a password: it travels on the pipe, never in argv.
        self._send(
            op="start", tracking_uri=uri, storage=storage_url, experiment=experiment, studies=studies, version=version
        )

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.replies.put(json.loads(line))

    def _send(self, **message: Any) -> bool:
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):  # the follower is gone (broken pipe, closed); close() reports it
            return False

    def _reply(self, op: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                reply = self.replies.get(timeout=left)
            except queue.Empty:
                return None
            if reply.get("op") == op:  # a late answer to an earlier question is dropped
                return reply
        return None

    def trial(self, study: str, trial_id: int) -> None:
        self._send(op="trial", study=study, id=trial_id)

    def runs(self, study: str, timeout: float = 60.0) -> dict[int, str]:
        """Trial number -> MLflow run id of the study's trials mirrored so far (waits for the follower to catch up)."""
        reply = self._send(op="runs", study=study) and self._reply("runs", timeout)
        return {int(k): v for k, v in (reply or {}).get("runs", {}).items()}

    def attach(self, study: str, paths: list[Path], root: Path) -> None:
        """Files under ``root`` for the study's parent run, in the same folders there (``plots/``)."""
        files = [(str(p.resolve()), str(p.parent.relative_to(root)).removeprefix(".")) for p in paths]
        self._send(op="attach", study=study, paths=files)

    def end(self, study: str, status: str) -> None:
        self._send(op="end", study=study, status=status)

    def close(self, timeout: float = 300.0) -> dict[str, Any]:
        """Close the pipe, let the follower sync once more, and return its report (``error`` set if something is missing)."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        report = self._reply("report", timeout)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return report or {
            "error": f"the tracking process ended without a report (exit code {self.proc.poll()})",
            "written": 0,
            "runs": 0,
        }


def _retry(action: Callable[[], Any], attempts: int = 3, pause: float = 1.0) -> Any:
    """``action()``, tried again after a growing pause on any error (a tracking server may come back)."""
    for attempt in range(attempts - 1):
        try:
            return action()
        except Exception:  # MLflow, SQLAlchemy and HTTP errors alike
            time.sleep(pause * 2**attempt)
    return action()


class _Session:
    """The follower's side: mirrors what it is told at once; what fails is caught up later.

    After a failure it leaves the tracking store alone for ``RETRY_SECONDS``
    (a dead server costs the study nothing), then the next message syncs its
    study whole, filling the gap; at the end everything still owed is tried
    once more, with pauses.
    """

    def __init__(self, start: dict[str, Any]) -> None:
        self.start = start
        self.mirror: Mirror | None = None
        self.error: str | None = None
        self.failed_at = 0.0
        self.dirty: set[str] = set()  # studies to sync whole
        self.attachments: list[tuple[str, list[tuple[str, str]]]] = []  # not attached yet
        self.running: set[str] = set()  # parent runs set RUNNING by this session
        self.ended: dict[str, str] = {}  # study -> final parent status
        self.count = SyncCount()

    def connect(self) -> Mirror:
        if self.mirror is None:
            storage = optuna.storages.RDBStorage(self.start["storage"])
            self.mirror = Mirror(
                self.start["tracking_uri"],
                self.start["experiment"],
                storage,
                self.start["storage"],
                self.start["version"],
            )
        return self.mirror

    def handle(self, message: dict[str, Any]) -> dict[str, Any] | None:
        op, study = message["op"], message.get("study", "")
        if op == "attach":
            self.attachments.append((study, message["paths"]))
        if op == "end":
            self.ended[study] = message["status"]
        if self.error is not None and time.monotonic() - self.failed_at < RETRY_SECONDS:
            self.dirty.add(study)
        else:
            self._mirror(op, study, message)
        if op == "runs":  # after a first sync of the study: a resumed study that ran no trial still knows its runs
            runs = self.mirror.runs.get(study, {}) if self.mirror else {}
            return {"op": "runs", "runs": {k.split("/")[1]: v for k, v in runs.items() if k.startswith("trial/")}}
        return None

    def _mirror(self, op: str, study: str, message: dict[str, Any]) -> None:
        try:
            mirror = self.connect()
            if study not in self.running or study in self.dirty:
                self.count += mirror.sync(study)
                mirror.parent(study, "RUNNING")
                self.running.add(study)
                self.dirty.discard(study)
            if op == "trial":
                for record in mirror.records(study, [mirror.storage.get_trial(message["id"])]):
                    self.count += mirror.write(study, record)
            elif op == "attach":
                mirror.merge_parents(study)
                mirror.attach(study, self.attachments.pop()[1])
            elif op == "end":
                self.count += mirror.sync(study)
                mirror.parent(study, message["status"])
            self.error = None
        except Exception as err:  # the study goes on; a later message or finish() catches up
            self.error, self.failed_at = reason(err), time.monotonic()
            self.dirty.add(study)

    def finish(self) -> dict[str, Any]:
        """One last try at everything still owed; parents this session left RUNNING become KILLED."""
        self.error = None
        try:
            mirror = _retry(self.connect)
            names = optuna.get_all_study_names(mirror.storage)
            for study in [s for s in self.start["studies"] if s in names]:
                if study in self.dirty or study not in self.ended:
                    self.count += _retry(lambda s=study: mirror.sync(s))
                if study in self.running or study in self.dirty:
                    _retry(lambda s=study: mirror.parent(s, self.ended.get(s, "KILLED")))
            for study, paths in self.attachments:
                _retry(lambda s=study, p=paths: mirror.attach(s, p))
            runs = sum(len(mirror.runs.get(s, {})) for s in self.start["studies"])
        except Exception as err:  # reported: `tuner sync` fills the gap
            self.error, runs = reason(err), 0
        return {"op": "report", "error": self.error, "written": self.count.written, "runs": runs}


def follow(lines: IO[str], reply: IO[str]) -> None:
    """The follower's loop: mirror what the training process reports; at EOF, however it ended, finish and report."""
    start = json.loads(lines.readline() or "{}")
    if start.get("op") != "start":
        return
    session = _Session(start)
    for line in lines:
        answer = session.handle(json.loads(line))
        if answer is not None:
            reply.write(json.dumps(answer) + "\n")
            reply.flush()
    reply.write(json.dumps(session.finish()) + "\n")
    reply.flush()


if __name__ == "__main__":
    # The protocol owns stdout; anything else printed goes to stderr.
    protocol, sys.stdout = sys.stdout, sys.stderr
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    follow(sys.stdin, protocol)
