"""Budget tickets: a study's slots held by RUNNING trials of the study itself, kept alive by one thread per worker.

How a slot is taken, kept alive and a trial stored is :mod:`tuner.study.storage`'s (the only module that touches
Optuna's private tables).
"""

from __future__ import annotations

import contextlib
import threading

import optuna
from optuna.trial import FrozenTrial

from tuner.study import storage as tables
from tuner.study.storage import Taken, Ticket

# A worker's tickets beat every HEARTBEAT_SECONDS; one silent for GRACE_SECONDS
# belongs to a dead worker: it is failed and its slot trained again.
HEARTBEAT_SECONDS = 5
GRACE_SECONDS = 20
# Storages written by earlier versions of tuner kept the tickets in a second study per study, named so;
# it is deleted when its study is next opened (what it holds counts for nothing now).
TICKETS_PREFIX = "tuner-tickets:"


class Tickets:
    """Budget reservations shared by every worker of a study, so that the budget is exact.

    A worker takes a ticket (a RUNNING trial of the study, see
    :mod:`tuner.study.storage`) before training, and the finished trial is stored
    into it. While open (``with tickets:``), one thread beats every live
    ticket; the tickets of a dead worker (kill -9, a lost machine) stop beating
    and are failed after ``GRACE_SECONDS``: their slots are trained again. On
    closing, the tickets still live are given back (failed with no outcome).
    """

    def __init__(self, storage: optuna.storages.RDBStorage, study: optuna.Study) -> None:
        self.storage = storage
        _drop_legacy_ledger(storage, study.study_name)
        self.writer = tables.writer(storage, study)
        self._live: dict[int, Ticket] = {}  # this worker's, by storage id
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> Tickets:
        self._stop.clear()
        self._beat = threading.Thread(target=self._keep_alive, daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._beat is not None  # started by __enter__
        self._beat.join()
        if self._live:
            self.release(list(self._live.values()))

    def _keep_alive(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with self._lock:
                live = list(self._live)
            if live:
                self.writer.beat(live)

    def take(self, n: int, budget: int, known: set[int]) -> Taken:
        """Up to ``n`` tickets for the next trials, in one transaction and one read of the storage (two when other
        workers stored trials the caller does not know); fewer (or none) when the slots left are held by trials that
        count or run. ``budget``: the trials the study may count; ``known``: the numbers of the trials the caller
        has."""
        taken = self.writer.take(n, budget, known)
        with self._lock:
            self._live.update((t.trial_id, t) for t in taken.tickets)
        return taken

    def settle(self, trials: list[tuple[FrozenTrial, Ticket]]) -> list[tuple[int, int]]:
        """Store each finished trial into its ticket, all in one transaction; returns each one's storage id and
        number."""
        written = self.writer.settle(trials)
        self._forget([ticket for _, ticket in trials])
        return written

    def release(self, tickets: list[Ticket]) -> None:
        """Give the slots of ``tickets`` back to the budget, with no trial trained (failed with no outcome)."""
        self.writer.release(tickets)
        self._forget(tickets)

    def _forget(self, tickets: list[Ticket]) -> None:
        with self._lock:
            for ticket in tickets:
                self._live.pop(ticket.trial_id, None)


def _drop_legacy_ledger(storage: optuna.storages.RDBStorage, name: str) -> None:
    with contextlib.suppress(KeyError):  # none, or another worker deleted it a moment ago
        optuna.delete_study(study_name=TICKETS_PREFIX + name, storage=storage)
