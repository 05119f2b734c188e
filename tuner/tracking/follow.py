"""The follower process (``python -m tuner.tracking.follow``): mirrors into MLflow what the training process reports
on its stdin (the protocol: :class:`tuner.tracking.follower.Follower`), and answers on its stdout."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import IO, Any

import optuna

from tuner.errors import reason
from tuner.study.connection import close_storage
from tuner.tracking.mirror import Mirror, SyncCount

# After a tracking failure the follower leaves the store alone this long (seconds).
RETRY_SECONDS = 30.0
# The priority of the thread that mirrors trials and final runs while the training trains (see Background).
BACKGROUND_NICE = 10
# The messages that thread takes: something stored (a trial, a final evaluation), which no answer waits for.
STORED = ("trial", "final")


def _retry(action: Callable[[], Any], attempts: int = 3, pause: float = 1.0) -> Any:
    """``action()``, tried again after a growing pause on any error (a tracking server may come back)."""
    for attempt in range(attempts - 1):
        try:
            return action()
        except Exception:  # MLflow, SQLAlchemy and HTTP errors alike
            time.sleep(pause * 2**attempt)
    return action()


class Session:
    """The follower's side: mirrors what it is told at once; what fails is caught up later.

    After a failure it leaves the tracking store alone for ``RETRY_SECONDS``
    (a dead server costs the study nothing), then the next message syncs its
    study whole, filling the gap; at the end everything still owed is tried
    once more, with pauses.
    """

    def __init__(self, start: dict[str, Any]) -> None:
        self.start = start
        self.mirror: Mirror | None = None
        self.storage: optuna.storages.RDBStorage | None = None
        self.error: str | None = None
        self.failed_at = 0.0
        self.dirty: set[str] = set()  # studies to sync whole
        self.attachments: list[tuple[str, list[tuple[str, str]]]] = []  # not attached yet
        self.running: set[str] = set()  # parent runs set RUNNING by this session
        self.ended: dict[str, str] = {}  # study -> final parent status
        self.count = SyncCount()

    def connect(self) -> Mirror:
        """The session's :class:`Mirror`, made on first use (it imports MLflow and may create the store)."""
        if self.mirror is None:
            self.storage = self.storage or optuna.storages.RDBStorage(self.start["storage"])
            self.mirror = Mirror(
                self.start["tracking_uri"],
                self.start["experiment"],
                self.storage,
                self.start["storage"],
                self.start["version"],
            )
        return self.mirror

    def close(self) -> None:
        """Close the connections to the Optuna storage: the last one to an SQLite file folds its write-ahead log back
        into it, so no ``-wal`` file is left beside it when the training process was killed before this one ends."""
        if self.storage is not None:
            close_storage(self.storage)

    def handle(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Act on one message of the training process; the answer to a ``runs`` question, else None."""
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
            if op in STORED:  # each run written as it is stored: no search of the tracking store
                stored = (
                    mirror.records(study, [mirror.storage.get_trial(message["id"])])
                    if op == "trial"
                    else mirror.final_runs(study)
                )
                for record in stored:
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
                    self.count += _retry(partial(mirror.sync, study))
                if study in self.running or study in self.dirty:
                    _retry(partial(mirror.parent, study, self.ended.get(study, "KILLED")))
            for study, paths in self.attachments:
                _retry(partial(mirror.attach, study, paths))
            runs = sum(len(mirror.runs.get(s, {})) for s in self.start["studies"])
        except Exception as err:  # reported: `tuner sync` fills the gap
            self.error, runs = reason(err), 0
        return {"op": "report", "error": self.error, "written": self.count.written, "runs": runs}


class Background:
    """The trials and final evaluations the training stores, mirrored by a thread below the training's priority while
    it trains (a study's final runs, with their step sizes, hold as many metrics as its trials together).

    On Linux a thread has a priority of its own: this one runs at ``nice`` 10, so
    that it takes the cores the training leaves idle (the report's drawing,
    waits on the storage) rather than slowing its epochs; it connects to the
    store (MLflow's import, a new ``mlflow.db``'s tables) at once, before the
    first trial is stored. Once the training stops training (its first other
    message, or the end of the pipe: ended or killed), :meth:`stop` hands what
    is left to the calling thread, which runs at the follower's own priority:
    a process cannot raise its priority again, and on a loaded machine work
    left at ``nice`` 10 could wait minutes for a core.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.stored: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tuner-mirror", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        if sys.platform.startswith("linux"):  # elsewhere the priority is the whole process's
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
        with contextlib.suppress(Exception):  # a store that fails now is retried by the next message
            self.session.connect()
        # A message taken from the queue is always mirrored: stop() waits for it, and returns only those not taken.
        while not self.stopped.is_set() and (message := self.stored.get()) is not None:
            self.session.handle(message)

    def stop(self) -> list[dict[str, Any]]:
        """Stop after the message being mirrored; those not mirrored yet, for the caller."""
        if not self.stopped.is_set():
            self.stopped.set()
            self.stored.put(None)
            self.thread.join()
        left = []
        with contextlib.suppress(queue.Empty):
            while True:
                left.append(self.stored.get_nowait())
        return [message for message in left if message is not None]


def follow(lines: IO[str], reply: IO[str]) -> None:
    """The follower's loop: mirror what the training process reports; at EOF, however it ended, finish and report.

    Stored trials and final evaluations are mirrored in the :class:`Background`; questions, attachments and ends, at
    the follower's own priority, after the messages before them.
    """
    start = json.loads(lines.readline() or "{}")
    if start.get("op") != "start":
        return
    session = Session(start)
    background = Background(session)
    for line in lines:
        message = json.loads(line)
        if message["op"] in STORED and not background.stopped.is_set():
            background.stored.put(message)
            continue
        for answer in map(session.handle, [*background.stop(), message]):
            if answer is not None:
                reply.write(json.dumps(answer) + "\n")
                reply.flush()
    # The training is gone: what is not mirrored yet is left to finish(), which syncs its studies whole (and
    # marks their parents KILLED), rather than written one by one.
    session.dirty.update(message["study"] for message in background.stop())
    report = session.finish()
    session.close()
    reply.write(json.dumps(report) + "\n")
    reply.flush()


if __name__ == "__main__":
    # The protocol owns stdout; anything else printed goes to stderr.
    protocol, sys.stdout = sys.stdout, sys.stderr
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    follow(sys.stdin, protocol)
    # The training process waits for this process to end (tuner.tracking.follower.Follower.close): the interpreter's
    # last garbage collection, over the 270,000 objects of MLflow and its imports, took 0.7-0.9 s of that wait here
    # (0.05 s without it), and finds nothing to free that the exit does not (the storage is closed in follow()).
    gc.freeze()
