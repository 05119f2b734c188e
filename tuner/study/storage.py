"""Optuna's private tables in one guarded place: budget slots taken, finished trials written, one transaction each.

A slot of a study's budget is a RUNNING trial of the study itself, with a
heartbeat: what Optuna and optuna-dashboard already show as a trial in flight.
It is taken only if the trials that count plus the trials RUNNING leave room,
counted and inserted while the study's row is locked, so that several workers
(``--jobs``, several commands, several machines) never exceed the budget. When
the trial ends, the same row receives its state, values, parameters, epochs
and attributes. A worker that dies (kill -9, a lost machine) stops beating:
its RUNNING trials are failed ``grace_period`` seconds later (Optuna's own
rule), count for nothing, and their slots are trained again.

Optuna's ``create_new_trial(template_trial=...)`` writes a finished trial row
by row, each row after a look-up of the trial: 35–100 ms here for a trial of
25 epochs (its intermediate values are most of the rows), more than a batched
quickstart trial's training. :class:`Tables` inserts the same rows into
Optuna's own tables (``optuna.storages._rdb.models``), one statement per table
for all the trials that end together: 6–9 ms for one trial, 2 ms a trial for
16 at once (CPU time); a test checks that a trial reads back equal to one that
``create_new_trial`` wrote. Optuna changes its tables in minor releases, so
they are written only under a version listed in ``TESTED_OPTUNA``; under any
other (or with the environment variable ``TUNER_OPTUNA_PUBLIC=1``)
:class:`Public` does the same through Optuna's public storage API, slower
(several reads and one write per row), with one warning line.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import orm

from tuner.study.outcomes import COUNTED, FINISHED, outcome, outcome_of

# Optuna versions (major.minor) whose private tables tuner was tested with.
TESTED_OPTUNA = ("5.0",)
PUBLIC_ENV = "TUNER_OPTUNA_PUBLIC"


@dataclass(frozen=True)
class Ticket:
    """A reserved slot of the budget: a RUNNING trial of the study, with its storage id and number."""

    trial_id: int
    number: int


@dataclass(frozen=True)
class Taken:
    """What one look at a study's budget found and took: the ``tickets`` taken, the trials that ``counted`` toward
    the budget before them, and the finished trials ``joined`` whose numbers the caller did not know, by number."""

    tickets: list[Ticket]
    counted: int
    joined: list[FrozenTrial]


@functools.cache
def private_tables() -> bool:
    """Whether the installed Optuna's tables may be written directly; says once per process when not."""
    version = ".".join(optuna.__version__.split(".")[:2])
    if os.environ.get(PUBLIC_ENV) == "1":
        why = f"{PUBLIC_ENV}=1"
    elif version not in TESTED_OPTUNA:
        why = f"optuna {optuna.__version__} is not one tuner was tested with ({', '.join(TESTED_OPTUNA)})"
    else:
        return True
    logging.getLogger("tuner").warning(f"tuner: {why}: trials are stored through Optuna's public API (correct, slower)")
    return False


def writer(storage: optuna.storages.RDBStorage, study: optuna.Study) -> Tables | Public:
    """The writer of ``study``'s budget slots and trials: :class:`Tables` where tested, else :class:`Public`."""
    return (Tables if private_tables() else Public)(storage, study)


def _grace(storage: optuna.storages.RDBStorage) -> datetime.timedelta:
    if storage.grace_period:
        return datetime.timedelta(seconds=storage.grace_period)
    assert storage.heartbeat_interval is not None, "a storage of budget slots beats (see open_storage)"
    return datetime.timedelta(seconds=2 * storage.heartbeat_interval)


def _given_back() -> FrozenTrial:
    """A slot given back untrained: failed with no outcome, as one lost with its worker (it counts for nothing)."""
    return optuna.trial.create_trial(state=TrialState.FAIL)


class Public:
    """Budget slots and trials through Optuna's public storage API only.

    Without the study's lock, workers that take the last slots at the same
    moment may together hold more than the budget: they look again after
    taking, and the slots numbered beyond the budget are given back (failed
    with no outcome, which counts for nothing). A worker killed between creating
    a trial and its first heartbeat leaves a RUNNING trial that Optuna never
    fails: its slot stays held (Optuna's API records both in two calls).
    """

    def __init__(self, storage: optuna.storages.RDBStorage, study: optuna.Study) -> None:
        self.storage, self.study = storage, study
        self.study_id = storage.get_study_id_from_name(study.study_name)

    def _tally(self) -> tuple[list[FrozenTrial], int, list[int]]:
        """The study's trials, how many count, and the numbers of those RUNNING."""
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        return trials, sum(outcome(t) in COUNTED for t in trials), running

    def take(self, n: int, budget: int, known: set[int]) -> Taken:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        trials, counted, running = self._tally()
        ids = [self.storage.create_new_trial(self.study_id) for _ in range(min(n, budget - counted - len(running)))]
        for trial_id in ids:
            self.storage.record_heartbeat(trial_id)
        tickets = [Ticket(trial_id, self.storage.get_trial(trial_id).number) for trial_id in ids]
        if tickets:
            _, done, running = self._tally()
            kept = [t for t in tickets if done + sum(number < t.number for number in running) < budget]
            self.release(tickets[len(kept) :])
            tickets = kept
        joined = [t for t in trials if t.state in FINISHED and t.number not in known]
        return Taken(tickets, counted, joined)

    def settle(self, trials: list[tuple[FrozenTrial, Ticket]]) -> list[tuple[int, int]]:
        """Store each finished trial into its ticket's slot (a new trial if the slot was failed as stale meanwhile);
        returns each one's storage id and number."""
        written = []
        for trial, ticket in trials:
            try:
                self._fill(ticket.trial_id, trial)
                written.append((ticket.trial_id, ticket.number))
            except optuna.exceptions.UpdateFinishedTrialError:
                trial_id = self.storage.create_new_trial(self.study_id, template_trial=trial)
                written.append((trial_id, self.storage.get_trial(trial_id).number))
        return written

    def _fill(self, slot: int, trial: FrozenTrial) -> None:
        for name, value in trial.params.items():
            distribution = trial.distributions[name]
            self.storage.set_trial_param(slot, name, distribution.to_internal_repr(value), distribution)
        for step, value in trial.intermediate_values.items():
            self.storage.set_trial_intermediate_value(slot, step, value)
        for key, value in trial.user_attrs.items():
            self.storage.set_trial_user_attr(slot, key, value)
        for key, value in trial.system_attrs.items():
            self.storage.set_trial_system_attr(slot, key, value)
        self.storage.set_trial_state_values(slot, trial.state, trial.values)

    def release(self, tickets: Iterable[Ticket]) -> None:
        """Give the slots of ``tickets`` back untrained (failed with no outcome); one no longer RUNNING is left as
        it is."""
        for ticket in tickets:
            try:
                self._fill(ticket.trial_id, _given_back())
            except optuna.exceptions.UpdateFinishedTrialError:
                continue

    def beat(self, trial_ids: list[int]) -> None:
        """Record a heartbeat of each RUNNING trial in ``trial_ids`` (Optuna's API: several statements each)."""
        for trial_id in trial_ids:
            self.storage.record_heartbeat(trial_id)


class Tables:
    """Budget slots and trials written into Optuna's own tables, one transaction each (see the module's docstring)."""

    def __init__(self, storage: optuna.storages.RDBStorage, study: optuna.Study) -> None:
        self.storage = storage
        self.study_id = storage.get_study_id_from_name(study.study_name)
        # The statements every trial sends, built once: building them again is most of their CPU time.
        m = models()
        studies, trial, attr, beat = (
            m.StudyModel.__table__,
            m.TrialModel,
            m.TrialUserAttributeModel,
            m.TrialHeartbeatModel,
        )
        # An UPDATE, not Optuna's SELECT ... FOR UPDATE: SQLite locks on a transaction's first write, and pysqlite
        # starts the transaction only there.
        self._lock_study = (
            sqlalchemy.update(studies)
            .where(studies.c.study_id == self.study_id)
            .values(study_name=studies.c.study_name)
        )
        # The database's clock, as the heartbeats' (naive, as Optuna compares them).
        self._look = (
            sqlalchemy.select(
                trial.trial_id,
                trial.number,
                trial.state,
                attr.value_json,
                beat.heartbeat,
                sqlalchemy.func.now().label("now"),
            )
            .outerjoin(attr, (attr.trial_id == trial.trial_id) & (attr.key == "outcome"))
            .outerjoin(beat, beat.trial_id == trial.trial_id)
            .where(trial.study_id == self.study_id)
        )

    def _lock(self, session: orm.Session) -> None:
        """Hold the study's row until the transaction ends: no other worker numbers or counts its trials meanwhile."""
        session.connection().execute(self._lock_study)

    def take(self, n: int, budget: int, known: set[int]) -> Taken:
        """Up to ``n`` new RUNNING trials with their first heartbeat, as many as the ``budget`` has room for, in one
        transaction and one read; RUNNING trials silent for the grace period are failed first. ``known``: the caller's
        trial numbers (the finished trials not among them are read whole, a second read, as ``joined``)."""
        m = models()
        trial, beat = m.TrialModel, m.TrialHeartbeatModel
        with orm.Session(self.storage.engine) as session, session.begin():
            self._lock(session)
            rows = session.execute(self._look).all()
            stale = {
                r.trial_id
                for r in rows
                if r.state == TrialState.RUNNING
                and r.heartbeat
                and r.now.replace(tzinfo=None) - r.heartbeat > _grace(self.storage)
            }
            for row in session.scalars(sqlalchemy.select(trial).where(trial.trial_id.in_(stale))) if stale else []:
                row.state, row.datetime_complete = TrialState.FAIL, datetime.datetime.now()
            states = [
                (
                    TrialState.FAIL if r.trial_id in stale else r.state,
                    r.value_json and json.loads(r.value_json),
                    r.number,
                )
                for r in rows
            ]
            counted = sum(outcome_of(state, stored) in COUNTED for state, stored, _ in states)
            running = sum(state == TrialState.RUNNING for state, _, _ in states)
            new = [
                trial(
                    study_id=self.study_id,
                    number=len(rows) + i,
                    state=TrialState.RUNNING,
                    datetime_start=datetime.datetime.now(),
                )
                for i in range(max(0, min(n, budget - counted - running)))
            ]
            session.add_all(new)
            session.flush()
            if new:
                session.connection().execute(
                    sqlalchemy.insert(beat.__table__), [{"trial_id": row.trial_id} for row in new]
                )
            tickets = [Ticket(row.trial_id, row.number) for row in new]
        fresh = {number for state, _, number in states if state in FINISHED and number not in known}
        # Other workers' trials, read whole through Optuna (a second read, only when there are any).
        joined = (
            [
                t
                for t in self.storage.get_all_trials(self.study_id, deepcopy=False, states=FINISHED)
                if t.number in fresh
            ]
            if fresh
            else []
        )
        return Taken(tickets, counted, joined)

    def settle(self, trials: list[tuple[FrozenTrial, Ticket]]) -> list[tuple[int, int]]:
        """Store each finished trial into its ticket's slot, all in one transaction and with no read of the storage
        while every slot is held (a slot failed as stale meanwhile: as a new trial, numbered after a count); returns
        each one's storage id and number."""
        with orm.Session(self.storage.engine) as session, session.begin():
            self._lock(session)
            placed = []  # (trial, storage id, number)
            for t, ticket in trials:
                if self._close(session, t, ticket.trial_id):
                    placed.append((t, ticket.trial_id, ticket.number))
                else:
                    placed.append((t, *self._add(session, t)))
            rows: dict[sqlalchemy.Table, list[dict]] = {}
            for t, trial_id, _ in placed:
                for table, children in _children(trial_id, t).items():
                    rows.setdefault(table, []).extend(children)
            # One INSERT per table for all the trials (executemany), without the ORM's bookkeeping of each row.
            for table, children in rows.items():
                if children:
                    session.connection().execute(sqlalchemy.insert(table), children)
        return [(trial_id, number) for _, trial_id, number in placed]

    def release(self, tickets: Iterable[Ticket]) -> None:
        """Give the slots of ``tickets`` back untrained (failed with no outcome), in one transaction; one no longer
        RUNNING is left as it is."""
        with orm.Session(self.storage.engine) as session, session.begin():
            self._lock(session)
            for ticket in tickets:
                self._close(session, _given_back(), ticket.trial_id)

    def beat(self, trial_ids: list[int]) -> None:
        """Record a heartbeat of each trial in ``trial_ids``, in one UPDATE (the database's clock, as Optuna's)."""
        beat = models().TrialHeartbeatModel
        with orm.Session(self.storage.engine) as session, session.begin():
            session.execute(
                sqlalchemy.update(beat).where(beat.trial_id.in_(trial_ids)).values(heartbeat=sqlalchemy.func.now())
            )

    def _close(self, session: orm.Session, t: FrozenTrial, trial_id: int) -> bool:
        """Give the RUNNING trial ``trial_id`` the state and times of ``t``; whether it was still RUNNING."""
        table = models().TrialModel.__table__
        done = session.connection().execute(
            sqlalchemy.update(table)
            .where(table.c.trial_id == trial_id, table.c.state == TrialState.RUNNING)
            .values(state=t.state, datetime_start=_utc(t.datetime_start), datetime_complete=_utc(t.datetime_complete))
        )
        return done.rowcount == 1

    def _add(self, session: orm.Session, t: FrozenTrial) -> tuple[int, int]:
        """A new trial row with the state and times of ``t``, numbered as Optuna numbers a trial (its study's trials
        with smaller ids); its storage id and number."""
        trial = models().TrialModel
        number = session.scalar(sqlalchemy.select(sqlalchemy.func.count()).where(trial.study_id == self.study_id))
        row = trial(
            study_id=self.study_id,
            number=number,
            state=t.state,
            datetime_start=t.datetime_start,
            datetime_complete=t.datetime_complete,
        )
        session.add(row)
        session.flush()
        return row.trial_id, row.number


def _utc(value: datetime.datetime | None) -> datetime.datetime | None:
    """``value`` as Optuna's trial table holds it: naive UTC (a naive ``value`` is local time, as Optuna's)."""
    return None if value is None else value.astimezone(datetime.UTC).replace(tzinfo=None)


def models():
    """Optuna's private table models, imported only where they are tested (:func:`private_tables`)."""
    from optuna.storages._rdb import models as tables

    return tables


def _children(trial_id: int, trial: FrozenTrial) -> dict[sqlalchemy.Table, list[dict]]:
    """The rows that ``create_new_trial(template_trial=trial)`` writes beside the trial's own, by table."""
    m = models()
    values = map(m.TrialValueModel.value_to_stored_repr, trial.values or [])
    steps = (
        (step, m.TrialIntermediateValueModel.intermediate_value_to_stored_repr(v))
        for step, v in trial.intermediate_values.items()
    )
    return {
        m.TrialValueModel.__table__: [
            {"trial_id": trial_id, "objective": i, "value": value, "value_type": kind}
            for i, (value, kind) in enumerate(values)
        ],
        m.TrialParamModel.__table__: [
            {
                "trial_id": trial_id,
                "param_name": name,
                "param_value": trial.distributions[name].to_internal_repr(value),
                "distribution_json": optuna.distributions.distribution_to_json(trial.distributions[name]),
            }
            for name, value in trial.params.items()
        ],
        m.TrialUserAttributeModel.__table__: [
            {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in trial.user_attrs.items()
        ],
        m.TrialSystemAttributeModel.__table__: [
            {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in trial.system_attrs.items()
        ],
        m.TrialIntermediateValueModel.__table__: [
            {"trial_id": trial_id, "step": step, "intermediate_value": value, "intermediate_value_type": kind}
            for step, (value, kind) in steps
        ],
    }
