"""The MLflow side: one experiment's parent and child runs, written from Optuna studies (the Optuna storage stays
the source of truth; :mod:`tuner.tracking.records` says what each run holds).

A parent run is RUNNING while ``tuner study`` works on its study, FINISHED
when the study reached its budget and its best config is exported, KILLED
when the command was interrupted. A resumed study logs under the same parent
run: parents are found by the study's ``uid`` user attribute, so a study
deleted and created again gets a new parent.

Recovery: a child run is written in three calls (created RUNNING, its params,
metrics and tags in batches, terminated with its status). One found RUNNING
was cut short: it is deleted and written again. :meth:`Mirror.sync` does this
for a whole study, idempotently, from the Optuna storage alone (``tuner sync``).

MLflow is imported when a :class:`Mirror` is made, in the follower process or ``tuner sync``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from tuner.errors import UserError, mask_url
from tuner.study.outcomes import FINISHED
from tuner.tracking.records import RunRecord, final_records, ms, record_key, trial_record
from tuner.tracking.uri import artifact_location

# The MLflow 3 UI opens an experiment without this tag in its GenAI (traces) view; tuner's runs are model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# MLflow's limits per log_batch call.
BATCH = {"metrics": 1000, "params": 100, "tags": 100}
# Set before MLflow is imported: its INFO lines (database creation) would break
# into the progress bars, and it prints each run's URL, with any password in
# the tracking URI, to stdout.
QUIET_ENV = {"MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


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


def finished(runs: list[Any]) -> list[Any]:
    """The finished copies of one run, the one to keep first; a copy left RUNNING was cut short, or is being written."""
    return sorted((run for run in runs if run.info.status != "RUNNING"), key=_first)


def search(client: Any, experiment_id: str, filter_string: str) -> Iterator[Any]:
    """Every run of the MLflow experiment ``experiment_id`` that ``filter_string`` matches, 1,000 a page."""
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def study_parents(
    client: Any, experiment_id: str, storage: optuna.storages.BaseStorage, study: str
) -> tuple[list[Any], str, dict[str, Any]]:
    """The parent runs of ``study``, the one to keep first, found by its ``uid`` (its storage id for a study of an
    older tuner); its uid and user attributes."""
    study_id = storage.get_study_id_from_name(study)
    attrs = storage.get_study_user_attrs(study_id)
    uid = attrs.get("uid") or str(study_id)
    filter_string = f"tags.`tuner.study_uid` = '{uid}' and tags.`tuner.role` = 'study'"
    return sorted(search(client, experiment_id, filter_string), key=_first), uid, attrs


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
                f"MLflow experiment {experiment!r} in {mask_url(uri)!r} is deleted: restore it (`mlflow experiments "
                "restore`) or remove it for good (`mlflow gc`)"
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
        self.metrics: dict[str, str] = {}  # study name -> its metric's name

    def _search(self, filter_string: str) -> Iterator[Any]:
        return search(self.client, self.experiment_id, filter_string)

    def _parents(self, study: str) -> tuple[list[Any], str, dict[str, Any]]:
        return study_parents(self.client, self.experiment_id, self.storage, study)

    def parent(self, study: str, status: str | None = None) -> str:
        """The parent run of ``study`` (created if missing); ``status`` (e.g. RUNNING) is set on it."""
        if study not in self.parents:
            self._adopt(study, *self._parents(study), status)
        if status is not None:
            self._set_status(self.parents[study], status)
        return self.parents[study]

    def _adopt(self, study: str, found: list[Any], uid: str, attrs: dict[str, Any], status: str | None) -> None:
        """Make the first of the ``found`` parent runs this mirror's parent of ``study``, or a new one when none was
        found
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
                RunRecord("", optimizer, "RUNNING", ms(None), 0, {k: str(v) for k, v in setup.items()}, tags)
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
        """The study's first parent run, into which the others move: another mirror may have created one at the same
        moment."""
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
        """A new run of ``record`` (with ``tags`` added), left RUNNING; one the store refuses to complete is deleted,
        not left RUNNING."""
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
        done = finished(existing)
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
        """The child runs that ``study`` should have (``trials``: only these; default every finished trial and the
        final runs)."""
        optimizer = study.rsplit("/", 1)[-1]
        if trials is not None:  # one stored trial during a study: no read of the study's attributes
            return [trial_record(study, optimizer, self._metric(study), t) for t in trials]
        study_id = self.storage.get_study_id_from_name(study)
        attrs = self.storage.get_study_user_attrs(study_id)
        setup = attrs.get("setup", {})
        metric = self.metrics[study] = setup.get("metric", "metric")
        # A trial without an outcome is a budget slot lost with its worker (tuner.study.storage): nothing trained
        # to an end.
        finished = self.storage.get_all_trials(study_id, deepcopy=False, states=FINISHED)
        records = [trial_record(study, optimizer, metric, t) for t in finished if "outcome" in t.user_attrs]
        return records + self._final_records(study, study_id, attrs)

    def final_runs(self, study: str) -> list[RunRecord]:
        """The child runs of the study's final evaluation, none before it is stored."""
        study_id = self.storage.get_study_id_from_name(study)
        return self._final_records(study, study_id, self.storage.get_study_user_attrs(study_id))

    def _final_records(self, study: str, study_id: int, attrs: dict[str, Any]) -> list[RunRecord]:
        final = attrs.get("final")
        if not final:
            return []
        best = self.storage.get_trial(self.storage.get_trial_id_from_study_id_trial_number(study_id, final["trial"]))
        return final_records(study, study.rsplit("/", 1)[-1], attrs.get("setup", {}), final, best)

    def _metric(self, study: str) -> str:
        """The study's metric name (``accuracy``), read once: a study's setup never changes (resume refuses that)."""
        if study not in self.metrics:
            setup = self.storage.get_study_user_attrs(self.storage.get_study_id_from_name(study)).get("setup", {})
            self.metrics[study] = setup.get("metric", "metric")
        return self.metrics[study]

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
            done = finished(runs)
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
