"""Opening a study storage: any SQLAlchemy URL, created on first use, with one-line errors for a bad URL or server."""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import optuna
import sqlalchemy

from tuner.errors import UserError, mask_url, sqlite_file, url_failure
from tuner.study.budget import GRACE_SECONDS, HEARTBEAT_SECONDS

SQLITE_LOCK_SECONDS = 60
CREATE_ATTEMPTS = 3


def open_storage(url: str, must_exist: bool = False, read_only: bool = False) -> optuna.storages.RDBStorage:
    """The Optuna RDB storage at ``url`` (any SQLAlchemy URL), created if missing unless ``must_exist`` (default
    False), with tuner's heartbeat (``HEARTBEAT_SECONDS``) and grace period (``GRACE_SECONDS``). ``read_only``: for a
    command that only reads, an SQLite file in a folder this process cannot write is opened read-only
    (:func:`_read_only`), which a plain open would refuse.

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
    opened = _read_only(url) if read_only else url
    failure: Exception | None = None
    for attempt in range(CREATE_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                # Heartbeats are experimental in Optuna: stable enough for us.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    opened, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS
                )
            if storage.engine.dialect.name == "sqlite":
                sqlalchemy.event.listen(storage.engine, "connect", _write_ahead_log)
                # Optuna's own first connections (its tables, its version check) predate the listener.
                storage.engine.dispose()
                with storage.engine.connect():  # a file that cannot switch fails here, with its one line
                    pass
            return storage
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
    folder = _unwritable_folder(url)
    allowed = (
        f"allowed: an SQLite file in a writable folder: SQLite writes its write-ahead log beside it, and {folder!r} "
        "is not writable"
        if folder
        else "allowed: an SQLAlchemy URL such as sqlite:///tuner.db or postgresql://user:password@host/db"
    )
    raise UserError(
        f"--storage: cannot open {mask_url(url)!r}: {url_failure(failure, url)}{driver} ({allowed})"
    ) from None


@contextlib.contextmanager
def storage_at(url: str, must_exist: bool = False, read_only: bool = False) -> Iterator[optuna.storages.RDBStorage]:
    """:func:`open_storage` for the length of a ``with`` block, its connections closed at the end (also on an error):
    the last connection to an SQLite file folds the write-ahead log back into it, so no ``-wal`` and ``-shm`` files
    are left beside it, in a process that goes on (a test, a notebook) as in one that exits. Raises as
    :func:`open_storage` does."""
    storage = open_storage(url, must_exist, read_only)
    try:
        yield storage
    finally:
        close_storage(storage)


def close_storage(storage: optuna.storages.RDBStorage) -> None:
    """Close ``storage``'s connections (it opens new ones if used again): the last connection to an SQLite file folds
    the write-ahead log back into it, and its ``-wal`` and ``-shm`` files go."""
    storage.remove_session()
    storage.engine.dispose()


def _write_ahead_log(connection: Any, _record: Any) -> None:
    """SQLite's write-ahead log, synced at checkpoints only (SQLAlchemy's ``connect`` event, every new connection).

    With SQLite's defaults (a rollback journal, ``synchronous=FULL``) each commit waits for several fsyncs: 20 ms
    here, two commits a trial (its budget slot, then the trial stored). In WAL mode with ``synchronous=NORMAL`` a
    commit is an append to the log, synced at checkpoints: a process killed at any point (kill -9) loses nothing
    committed; a power loss or an OS crash may lose the last commits, never the database's consistency. Readers and
    the writer no longer block each other, and the mode stays with the file (every process that opens it uses it).
    """
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _read_only(url: str) -> str:
    """``url``, or for an SQLite file in a folder this process cannot write, the URL that opens it read-only: SQLite
    cannot make the write-ahead log's ``-wal`` and ``-shm`` files beside it, which even a read needs. Without a
    ``-wal`` file no process is writing it, and it is read as immutable (no lock files at all); with one, read-only
    beside the writer's files."""
    if not _unwritable_folder(url):
        return url
    database = os.path.abspath(sqlite_file(url))
    immutable = "" if os.path.exists(database + "-wal") else "&immutable=1"
    return f"sqlite:///file:{quote(database)}?mode=ro{immutable}&uri=true"


def _unwritable_folder(url: str) -> str:
    """The folder of the SQLite file ``url`` names when this process cannot write it; "" otherwise (a writable folder,
    a URI filename, an in-memory database, another database)."""
    database = sqlite_file(url) if url.startswith("sqlite:") else ""
    if not database or database.startswith("file:"):
        return ""
    folder = os.path.dirname(os.path.abspath(database))
    return "" if os.access(folder, os.W_OK) else folder


def _sqlite_file_exists(url: str) -> bool:
    database = sqlite_file(url)
    return bool(database) and os.path.isfile(database)
