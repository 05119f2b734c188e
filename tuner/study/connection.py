"""Opening a study storage: any SQLAlchemy URL, created on first use, with one-line errors for a bad URL or server."""

from __future__ import annotations

import os
import time
import warnings

import optuna

from tuner.errors import UserError, mask_url, sqlite_file, url_failure
from tuner.study.budget import GRACE_SECONDS, HEARTBEAT_SECONDS

SQLITE_LOCK_SECONDS = 60
CREATE_ATTEMPTS = 3


def open_storage(url: str, must_exist: bool = False) -> optuna.storages.RDBStorage:
    """The Optuna RDB storage at ``url`` (any SQLAlchemy URL), created if missing unless ``must_exist`` (default
    False), with tuner's heartbeat (``HEARTBEAT_SECONDS``) and grace period (``GRACE_SECONDS``).

    Raises :class:`UserError` naming ``--storage`` if ``must_exist`` and the SQLite file does not exist, if the
    database driver is missing, or if the URL or server cannot be opened (the password masked).
    """
    if must_exist and url.startswith("sqlite:") and not _sqlite_file_exists(url):
        raise UserError(
            f"--storage: {url!r} does not exist (allowed: the storage a `tuner study` wrote, e.g. sqlite:///tuner.db)"
        )
    # SQLite: a writer waits for another's lock (several workers on one file)
    # instead of failing with "database is locked" after pysqlite's 5 s.
    engine = {"connect_args": {"timeout": SQLITE_LOCK_SECONDS}} if url.startswith("sqlite") else None
    failure: Exception | None = None
    for attempt in range(CREATE_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                # Heartbeats are experimental in Optuna: stable enough for us.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS
                )
        except Exception as err:  # SQLAlchemy raises many kinds for a bad URL or server
            # Workers that start together race to create the tables: the losers try again.
            if type(err).__name__ in ("OperationalError", "IntegrityError") and attempt < CREATE_ATTEMPTS - 1:
                time.sleep(1.0)
                continue
            failure = err
            break
    assert failure is not None  # the loop returns, or ends on its last attempt's failure
    # Optuna hides which driver is missing; PostgreSQL's is the one tuner documents.
    driver = (
        " (the database driver is missing: pip install 'tuner[postgresql]' for postgresql://)"
        if isinstance(failure, ImportError)
        else ""
    )
    raise UserError(
        f"--storage: cannot open {mask_url(url)!r}: {url_failure(failure, url)}{driver} "
        "(allowed: an SQLAlchemy URL such as sqlite:///tuner.db or postgresql://user:password@host/db)"
    ) from None


def _sqlite_file_exists(url: str) -> bool:
    database = sqlite_file(url)
    return bool(database) and os.path.isfile(database)
