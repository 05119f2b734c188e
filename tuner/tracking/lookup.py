"""The MLflow runs that mirror an experiment's trials, found without writing anything (``tuner plot``): the run id
that ``tuner study`` writes into a best config, for a folder redrawn from the storage alone.

A study's runs are those under its parent run, found by the study's ``uid`` as :class:`tuner.tracking.mirror.Mirror`
finds it, so a study deleted and created again under its name is not given its predecessor's runs. MLflow is imported
only when the store exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import optuna

from tuner.errors import UserError, mask_url, sqlite_file, url_failure
from tuner.tracking.mirror import QUIET_ENV, finished, search, study_parents


def mirrored_runs(
    uri: str, where: str, experiment: str, storage: optuna.storages.BaseStorage
) -> dict[str, dict[int, str]]:
    """Study name -> trial number -> MLflow run id of each finished trial run of ``experiment``'s studies found at
    ``uri`` (the first copy, as the mirror keeps it); empty when the store, the MLflow experiment or its runs are
    missing. An SQLite file that does not exist is not created. Raises :class:`UserError` naming ``where`` when the
    store cannot be read."""
    if urlsplit(uri).scheme.split("+")[0] == "sqlite" and not Path(sqlite_file(uri)).is_file():
        return {}
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return _runs(MlflowClient(tracking_uri=uri), experiment, storage)
    except (MlflowException, SQLAlchemyError, OSError) as err:  # a server's answer, a database's, a file's
        raise UserError(
            f"{where}: {mask_url(uri)!r}: MLflow's runs cannot be read: {url_failure(err, uri)} (allowed: the store "
            "tuner study wrote to, or --no-tracking for best configs without MLflow run ids)"
        ) from None


def _runs(client: Any, experiment: str, storage: optuna.storages.BaseStorage) -> dict[str, dict[int, str]]:
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        return {}
    runs: dict[str, dict[int, str]] = {}
    for study in storage.get_all_studies():
        if not study.study_name.startswith(f"{experiment}/"):
            continue
        parents = study_parents(client, found.experiment_id, storage, study.study_name)[0]
        if not parents:
            continue
        ids = runs[study.study_name] = {}
        children = search(client, found.experiment_id, f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
        for run in finished(list(children)):
            if run.data.tags.get("tuner.role") == "trial":
                ids.setdefault(int(run.data.tags["tuner.trial"]), run.info.run_id)
    return runs
