"""Optuna's private tables in one guarded place: budget slots taken, and finished trials written, in one transaction each.

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
class Taken:
    """What one look at a study's budget found and took."""

    slots: list[tuple[int, int]]  # the new RUNNING trials: storage id, number
    counted: int  # the trials that count toward the budget, before these
    joined: list[FrozenTrial]  # finished trials whose numbers the caller did not know, by number


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
    return datetime.timedelta(seconds=storage.grace_period or 2 * storage.heartbeat_interval)


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
        slots = [(trial_id, self.storage.get_trial(trial_id).number) for trial_id in ids]
        if slots:
            _, done, running = self._tally()
            kept = [s for s in slots if done + sum(number < s[1] for number in running) < budget]
            self.release([trial_id for trial_id, _ in slots[len(kept) :]])
            slots = kept
        joined = [t for t in trials if t.state in FINISHED and t.number not in known]
        return Taken(slots, counted, joined)

    def settle(self, trials: list[tuple[FrozenTrial, int]]) -> list[tuple[int, int]]:
        """Store each finished trial into its slot (a new trial if the slot was failed as stale meanwhile); returns
        each one's storage id and number."""
        written = []
        for trial, slot in trials:
            try:
                self._fill(slot, trial)
            except optuna.exceptions.UpdateFinishedTrialError:
                slot = self.storage.create_new_trial(self.study_id, template_trial=trial)
            written.append((slot, self.storage.get_trial(slot).number))
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

    def release(self, slots: Iterable[int]) -> None:
        """Give ``slots`` back untrained (failed with no outcome); one no longer RUNNING is left as it is."""
        for slot in slots:
            try:
                self._fill(slot, _given_back())
            except optuna.exceptions.UpdateFinishedTrialError:
                continue


class Tables:
    """Budget slots and trials written into Optuna's own tables, one transaction each (see the module's docstring)."""

    def __init__(self, storage: optuna.storages.RDBStorage, study: optuna.Study) -> None:
        self.storage = storage
        self.study_id = storage.get_study_id_from_name(study.study_name)

    def _lock(self, session: orm.Session) -> None:
        """Hold the study's row until the transaction ends: no other worker numbers or counts its trials meanwhile.

        An UPDATE, not Optuna's SELECT ... FOR UPDATE: SQLite locks on a transaction's first write, and pysqlite
        starts the transaction only there.
        """
        studies = models().StudyModel
        session.execute(
            sqlalchemy.update(studies).where(studies.study_id == self.study_id).values(study_name=studies.study_name)
        )

    def take(self, n: int, budget: int, known: set[int]) -> Taken:
        """Up to ``n`` new RUNNING trials with their first heartbeat, as many as the budget has room for, in one
        transaction; RUNNING trials silent for the grace period are failed first. ``known``: the caller's trial numbers."""
        m = models()
        trial, attr, beat = m.TrialModel, m.TrialUserAttributeModel, m.TrialHeartbeatModel
        with orm.Session(self.storage.engine) as session, session.begin():
            self._lock(session)
            # The database's clock, as the heartbeats' (naive, as Optuna compares them).
            rows = session.execute(
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
            ).all()
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
                session.execute(sqlalchemy.insert(beat), [{"trial_id": row.trial_id} for row in new])
            slots = [(row.trial_id, row.number) for row in new]
        fresh = {number for state, _, number in states if state in FINISHED and number not in known}
        joined = (
            [
                t
                for t in self.storage.get_all_trials(self.study_id, deepcopy=False, states=FINISHED)
                if t.number in fresh
            ]
            if fresh
            else []
        )
        return Taken(slots, counted, joined)

    def settle(self, trials: list[tuple[FrozenTrial, int]]) -> list[tuple[int, int]]:
        """Store each finished trial into its slot, all in one transaction (a slot failed as stale meanwhile: as a new
        trial); returns each one's storage id and number."""
        return self._write(trials, keep_unheld=True)

    def release(self, slots: Iterable[int]) -> None:
        """Give ``slots`` back untrained (failed with no outcome); one no longer RUNNING is left as it is."""
        self._write([(_given_back(), slot) for slot in slots], keep_unheld=False)

    def _write(self, trials: list[tuple[FrozenTrial, int]], keep_unheld: bool) -> list[tuple[int, int]]:
        trial = models().TrialModel
        with orm.Session(self.storage.engine) as session, session.begin():
            self._lock(session)
            # Loaded and set as objects: the model's properties convert the datetimes to what the columns hold (UTC).
            held = {
                row.trial_id: row
                for row in session.scalars(
                    sqlalchemy.select(trial).where(
                        trial.trial_id.in_([slot for _, slot in trials]), trial.state == TrialState.RUNNING
                    )
                )
            }
            for t, slot in trials:
                if slot in held:
                    held[slot].state, held[slot].datetime_start, held[slot].datetime_complete = (
                        t.state,
                        t.datetime_start,
                        t.datetime_complete,
                    )
            placed = []  # (trial, storage id, number)
            for t, slot in trials:
                if slot in held:
                    placed.append((t, slot, held[slot].number))
                elif keep_unheld:  # numbered as Optuna numbers a trial: its study's trials with smaller ids
                    number = session.scalar(
                        sqlalchemy.select(sqlalchemy.func.count()).where(trial.study_id == self.study_id)
                    )
                    row = trial(
                        study_id=self.study_id,
                        number=number,
                        state=t.state,
                        datetime_start=t.datetime_start,
                        datetime_complete=t.datetime_complete,
                    )
                    session.add(row)
                    session.flush()
                    placed.append((t, row.trial_id, row.number))
            tables: dict[type, list[dict]] = {}
            for t, trial_id, _ in placed:
                for model, children in _children(trial_id, t).items():
                    tables.setdefault(model, []).extend(children)
            # One INSERT per table for all the trials (executemany), without the ORM's bookkeeping of each row.
            for model, children in tables.items():
                if children:
                    session.execute(sqlalchemy.insert(model), children)
            return [(trial_id, number) for _, trial_id, number in placed]


def models():
    """Optuna's private table models, imported only where they are tested (:func:`private_tables`)."""
    from optuna.storages._rdb import models as tables

    return tables


def _children(trial_id: int, trial: FrozenTrial) -> dict[type, list[dict]]:
    """The rows that ``create_new_trial(template_trial=trial)`` writes beside the trial's own, by table."""
    m = models()
    values = map(m.TrialValueModel.value_to_stored_repr, trial.values or [])
    steps = (
        (step, m.TrialIntermediateValueModel.intermediate_value_to_stored_repr(v))
        for step, v in trial.intermediate_values.items()
    )
    return {
        m.TrialValueModel: [
            {"trial_id": trial_id, "objective": i, "value": value, "value_type": kind}
            for i, (value, kind) in enumerate(values)
        ],
        m.TrialParamModel: [
            {
                "trial_id": trial_id,
                "param_name": name,
                "param_value": trial.distributions[name].to_internal_repr(value),
                "distribution_json": optuna.distributions.distribution_to_json(trial.distributions[name]),
            }
            for name, value in trial.params.items()
        ],
        m.TrialUserAttributeModel: [
            {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in trial.user_attrs.items()
        ],
        m.TrialSystemAttributeModel: [
            {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in trial.system_attrs.items()
        ],
        m.TrialIntermediateValueModel: [
            {"trial_id": trial_id, "step": step, "intermediate_value": value, "intermediate_value_type": kind}
            for step, (value, kind) in steps
        ],
    }
