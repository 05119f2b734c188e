"""Budget tickets, and trials written to an Optuna RDB storage whole, in one transaction.

Optuna's ``create_new_trial(template_trial=...)`` writes a finished trial row
by row, each row after a look-up of the trial: 35–100 ms here for a trial of
25 epochs (its intermediate values are most of the rows), more than a batched
quickstart trial's training. :func:`write_trials` inserts the same rows into
Optuna's own tables (``optuna.storages._rdb.models``), one INSERT per table for
several trials: 6–9 ms for one trial, 2 ms a trial for 16 at once (CPU time);
a test checks that a trial reads back from the storage equal to one that
``create_new_trial`` wrote. The same transaction releases the trials' budget
tickets, so a trial moves from "held by a ticket" to "stored" at once.
"""

from __future__ import annotations

import datetime
import json
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import optuna
import sqlalchemy
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import orm

# A worker's budget tickets beat every HEARTBEAT_SECONDS; one silent for
# GRACE_SECONDS belongs to a dead worker and its slot is trained again.
HEARTBEAT_SECONDS = 5
GRACE_SECONDS = 20
TICKETS_PREFIX = "tuner-tickets:"


def _children(trial_id: int, trial: FrozenTrial) -> dict[type, list[dict]]:
    """The rows that ``create_new_trial(template_trial=trial)`` writes beside the trial's own, by table; a RUNNING
    trial (a budget ticket) gets its first heartbeat, as ``record_heartbeat`` writes it."""
    values = map(models.TrialValueModel.value_to_stored_repr, trial.values or [])
    steps = ((step, models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(v)) for step, v in trial.intermediate_values.items())
    return {
        models.TrialValueModel: [dict(trial_id=trial_id, objective=i, value=value, value_type=kind) for i, (value, kind) in enumerate(values)],
        models.TrialParamModel: [
            dict(trial_id=trial_id, param_name=name, param_value=trial.distributions[name].to_internal_repr(value),
                 distribution_json=optuna.distributions.distribution_to_json(trial.distributions[name]))
            for name, value in trial.params.items()
        ],
        models.TrialUserAttributeModel: [dict(trial_id=trial_id, key=k, value_json=json.dumps(v)) for k, v in trial.user_attrs.items()],
        models.TrialSystemAttributeModel: [dict(trial_id=trial_id, key=k, value_json=json.dumps(v)) for k, v in trial.system_attrs.items()],
        models.TrialIntermediateValueModel: [dict(trial_id=trial_id, step=step, intermediate_value=value, intermediate_value_type=kind)
                                             for step, (value, kind) in steps],
        models.TrialHeartbeatModel: [dict(trial_id=trial_id)] if trial.state == TrialState.RUNNING else [],
    }


def write_trials(storage: optuna.storages.RDBStorage, study_id: int, trials: list[FrozenTrial], release: Iterable[int] = ()) -> list[tuple[int, int]]:
    """Add ``trials`` to the study ``study_id`` and release the budget tickets ``release`` (their storage ids), in one
    transaction; returns each new trial's storage id and number. A released ticket ends COMPLETE (value 0); one that
    is no longer RUNNING (failed as stale by another worker) is left as it is."""
    with orm.Session(storage.engine) as session, session.begin():
        # Optuna locks the study's row while it numbers new trials (SQLite ignores it: it writes one transaction at a time).
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        rows = [models.TrialModel(study_id=study_id, number=None, state=trial.state, datetime_start=trial.datetime_start,
                                  datetime_complete=trial.datetime_complete) for trial in trials]
        session.add_all(rows)
        session.flush()
        # Numbered as Optuna numbers each (its trials with smaller ids): the first's count, then one up per row.
        first = rows[0].count_past_trials(session) if rows else 0
        tables: dict[type, list[dict]] = {}
        for number, (row, trial) in enumerate(zip(rows, trials), start=first):
            row.number = number
            for model, children in _children(row.trial_id, trial).items():
                tables.setdefault(model, []).extend(children)
        # One INSERT per table for all the trials (executemany), without the ORM's bookkeeping of each row.
        for model, children in tables.items():
            if children:
                session.execute(sqlalchemy.insert(model), children)
        held = sqlalchemy.select(models.TrialModel).where(models.TrialModel.trial_id.in_(list(release)), models.TrialModel.state == TrialState.RUNNING)
        for ticket in session.scalars(held):
            ticket.state, ticket.datetime_complete = TrialState.COMPLETE, datetime.datetime.now()
            ticket.values = [models.TrialValueModel(objective=0, value=0.0, value_type=models.TrialValueModel.TrialValueType.FINITE)]
        return [(row.trial_id, row.number) for row in rows]


@dataclass(frozen=True)
class Ticket:
    """A reserved slot of the budget: a RUNNING trial of the ledger study, numbered in the order tickets were taken."""

    trial_id: int
    number: int


class Tickets:
    """Budget reservations shared by every worker of a study, so that the budget is exact.

    A worker takes a ticket (a trial of the ledger study ``tuner-tickets:<study>``,
    RUNNING while its trial trains) before training. Ticket numbers are given
    out atomically by the storage; a ticket is kept only if the trials that
    count plus the live tickets numbered before it leave a slot. A finished
    trial is stored and its ticket released in one transaction
    (:func:`write_trials`), so no moment counts a trial zero times. While open
    (``with tickets:``), one thread beats every live ticket; tickets of a dead
    worker (kill -9, a lost machine) stop beating and are failed after
    ``GRACE_SECONDS``: their slots are trained again. On closing, the tickets
    still live are released: their slots go back to the budget. In the
    ledger, COMPLETE is a released ticket, PRUNED one refused for want of a
    slot and FAIL one lost with its worker.
    """

    def __init__(self, storage: optuna.storages.RDBStorage, name: str) -> None:
        self.storage = storage
        self.ledger = optuna.create_study(storage=storage, study_name=TICKETS_PREFIX + name, load_if_exists=True)
        self._ledger_id = storage.get_study_id_from_name(self.ledger.study_name)
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
        self._beat.join()
        if self._live:
            self.release(list(self._live.values()))

    def _keep_alive(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with self._lock:
                live = list(self._live)
            for trial_id in live:
                self.storage.record_heartbeat(trial_id)

    def _running(self) -> list[int]:
        """The numbers of every worker's live tickets."""
        with orm.Session(self.storage.engine) as session:
            running = sqlalchemy.select(models.TrialModel.number).where(models.TrialModel.study_id == self._ledger_id,
                                                                        models.TrialModel.state == TrialState.RUNNING)
            return list(session.scalars(running))

    def take(self, n: int, budget: int, counted: Callable[[], int]) -> list[Ticket]:
        """Up to ``n`` tickets for the next trials, in one transaction; fewer (or none) when the slots left are held
        (``counted()``: trials stored that count)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.ledger)
        n = min(n, budget - counted() - len(self._running()))  # spares the ledger tickets that would be refused
        if n <= 0:
            return []
        tickets = [Ticket(*t) for t in write_trials(self.storage, self._ledger_id, [optuna.trial.create_trial(state=TrialState.RUNNING)] * n)]
        running, done = self._running(), counted()
        kept = [t for t in tickets if done + sum(number < t.number for number in running) < budget]
        for ticket in tickets[len(kept):]:  # PRUNED, not FAIL: in the ledger FAIL means lost with its worker
            self.storage.set_trial_state_values(ticket.trial_id, TrialState.PRUNED)
        with self._lock:
            self._live.update((t.trial_id, t) for t in kept)
        return kept

    def settle(self, study_id: int, trials: list[tuple[FrozenTrial, Ticket]]) -> list[int]:
        """Store each finished trial and release its ticket, all in one transaction; returns the trials' storage ids."""
        written = write_trials(self.storage, study_id, [trial for trial, _ in trials], [ticket.trial_id for _, ticket in trials])
        self._forget([ticket for _, ticket in trials])
        return [trial_id for trial_id, _ in written]

    def release(self, tickets: list[Ticket]) -> None:
        """Give the slots of ``tickets`` back to the budget, with no trial stored."""
        write_trials(self.storage, self._ledger_id, [], [ticket.trial_id for ticket in tickets])
        self._forget(tickets)

    def _forget(self, tickets: list[Ticket]) -> None:
        with self._lock:
            for ticket in tickets:
                self._live.pop(ticket.trial_id, None)
