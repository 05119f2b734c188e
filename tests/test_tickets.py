"""Budget tickets taken several at once stay exact, one thread keeps them alive, and trials written whole equal Optuna's own,
through Optuna's tables and through its public API alike."""

from __future__ import annotations

import math
import threading
import time

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from tuner.study import budget as tickets
from tuner.study import storage as tables
from tuner.study.budget import Tickets
from tuner.study.outcomes import outcome


@pytest.fixture(params=["tables", "public"])
def writer(request, monkeypatch):
    """Which way trials are written: Optuna's tables (where tested), or its public API (the fallback)."""
    monkeypatch.setenv(tables.PUBLIC_ENV, "1" if request.param == "public" else "0")
    tables.private_tables.cache_clear()
    yield request.param
    tables.private_tables.cache_clear()


@pytest.fixture
def grace():
    """Seconds after which a ticket that does not beat is failed; the tests of dead workers make it 1."""
    return 60


@pytest.fixture
def storage(tmp_path, writer, grace):
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/t.db", heartbeat_interval=1, grace_period=grace)


@pytest.fixture
def study(storage):
    return optuna.create_study(storage=storage, study_name="s")


def finished_trials() -> list[optuna.trial.FrozenTrial]:
    """Trials of every kind a study stores: complete, pruned (a NaN and an inf among the epochs), failed; the TPE sampler's own attributes."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, constant_liar=True, n_startup_trials=1))
    ends = [
        (TrialState.COMPLETE, 0.5, [0.9, 0.7]),
        (TrialState.PRUNED, None, [1.0, math.inf, math.nan]),
        (TrialState.FAIL, None, []),
        (TrialState.COMPLETE, -math.inf, [2.0]),
    ]
    told = []
    for state, value, curve in ends:
        trial = study.ask()
        trial.suggest_float("lr", 1e-5, 1.0, log=True)
        trial.suggest_int("layers", 1, 4)
        trial.suggest_categorical("schedule", ["constant", "cosine"])
        for epoch, objective in enumerate(curve, 1):
            trial.report(objective, epoch)
        trial.set_user_attr("history", {"epoch": list(range(1, len(curve) + 1)), "val_loss": [1.5, None]})
        trial.set_user_attr("outcome", state.name.lower())
        told.append(study.tell(trial, value, state=state))
    return told


def test_trials_written_whole_read_back_as_optunas_own(storage, study, writer):
    assert tables.private_tables() == (writer == "tables")
    study_id = storage.get_study_id_from_name("s")
    trials = finished_trials()
    for trial in trials[:2]:
        storage.create_new_trial(study_id, template_trial=trial)
    held = Tickets(storage, study).take(4, 6, set())
    assert [t.number for t in held.tickets] == [2, 3, 4, 5] and held.counted == 2
    assert all(t.state == TrialState.RUNNING for t in storage.get_all_trials(study_id)[2:])
    written = Tickets(storage, study).settle(list(zip(trials, held.tickets)))
    assert [number for _, number in written] == [2, 3, 4, 5]
    stored = storage.get_all_trials(study_id)
    assert [t._trial_id for t in stored[2:]] == [trial_id for trial_id, _ in written]
    fields = ("state", "values", "params", "distributions", "user_attrs", "system_attrs")
    for ours, theirs in ((stored[2], stored[0]), (stored[3], stored[1])):  # the same trial, written both ways
        assert all(getattr(ours, f) == getattr(theirs, f) for f in fields)
        assert str(ours.intermediate_values) == str(theirs.intermediate_values)  # nan != nan
    for ours, trial in zip(stored[2:], trials):
        assert all(getattr(ours, f) == getattr(trial, f) for f in fields) and ours.datetime_complete is not None
    if writer == "tables":  # the in-memory trial's own times (Optuna's public API sets them when it is called)
        assert [(t.datetime_start, t.datetime_complete) for t in stored[2:]] == [
            (t.datetime_start, t.datetime_complete) for t in trials
        ]
    # Every client sees one study: the tickets are its own trials.
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["s"]


def test_tickets_taken_at_once_never_exceed_the_budget(storage, study):
    first, second = Tickets(storage, study), Tickets(storage, study)
    assert len(first.take(3, 5, set()).tickets) == 3
    held = second.take(4, 5, set()).tickets
    assert len(held) == 2 and first.take(1, 5, set()).tickets == []
    # A trial stored moves its slot from the ticket to the count, in one transaction.
    ((trial_id, _),) = second.settle([(finished_trials()[0], held[0])])
    look = first.take(1, 5, set())
    assert storage.get_trial(trial_id).value == 0.5 and look.tickets == [] and look.counted == 1
    assert [t.number for t in look.joined] == [held[0].number]  # the other worker's trial, for the sampler
    second.release(held[1:])  # handed back without a trial: failed with no outcome, not counted
    assert outcome(storage.get_trial(held[1].trial_id)) == "interrupted"
    assert len(first.take(2, 5, set()).tickets) == 1


def test_a_trial_reads_the_storage_once_and_heartbeats_read_nothing(tmp_path, monkeypatch):
    """Issue 19: the look at the budget is a trial's one read; storing it and beating its ticket only write."""
    monkeypatch.setenv(tables.PUBLIC_ENV, "0")
    tables.private_tables.cache_clear()
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/t.db", heartbeat_interval=1, grace_period=60)
    worker = Tickets(storage, optuna.create_study(storage=storage, study_name="s"))
    selects = []

    def count(conn, cursor, statement, *args) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", count)
    known: set[int] = set()
    trials = finished_trials()
    for trial in trials:
        (ticket,) = worker.take(1, 10, known).tickets
        worker.writer.beat([ticket.trial_id])
        ((_, number),) = worker.settle([(trial, ticket)])
        known.add(number)
    sqlalchemy.event.remove(storage.engine, "before_cursor_execute", count)
    tables.private_tables.cache_clear()
    assert len(selects) == len(trials)
    stored = storage.get_all_trials(storage.get_study_id_from_name("s"))
    assert [(t.number, t.state) for t in stored] == [(i, t.state) for i, t in enumerate(trials)]


@pytest.mark.parametrize("grace", [1])
def test_a_slot_failed_as_stale_while_its_worker_lived_is_stored_as_a_new_trial(storage, study):
    slow, other = Tickets(storage, study), Tickets(storage, study)
    (ticket,) = slow.take(1, 2, set()).tickets  # never beats: another worker takes it for dead
    time.sleep(2.5)
    assert len(other.take(2, 2, set()).tickets) == 2
    ((trial_id, number),) = slow.settle([(finished_trials()[0], ticket)])
    assert trial_id != ticket.trial_id and number == 3
    assert outcome(storage.get_trial(ticket.trial_id)) == "interrupted"  # lost: counts for nothing


@pytest.mark.parametrize("grace", [1])
def test_one_thread_keeps_every_live_ticket_alive_and_a_dead_workers_slots_come_back(storage, study, monkeypatch):
    monkeypatch.setattr(tickets, "HEARTBEAT_SECONDS", 0.3)
    alive, dead, other = Tickets(storage, study), Tickets(storage, study), Tickets(storage, study)
    threads = threading.active_count()
    with alive:
        assert threading.active_count() == threads + 1
        assert len(alive.take(3, 5, set()).tickets) == 3
        assert len(dead.take(2, 5, set()).tickets) == 2  # never beats, as after kill -9
        assert threading.active_count() == threads + 1
        time.sleep(2.5)
        # The dead worker's two tickets are failed as stale, the living one's three are not.
        assert len(other.take(5, 5, set()).tickets) == 2
    assert threading.active_count() == threads
    assert len(other.take(5, 5, set()).tickets) == 3  # closing released the living worker's tickets


def test_a_storage_with_the_old_ledger_study_resumes_and_loses_it(tmp_path):
    """Storages written before the tickets moved into the study kept them in a second study, ``tuner-tickets:<study>``."""
    url = f"sqlite:///{tmp_path}/old.db"
    study = optuna.create_study(storage=url, study_name="quickstart/adam")
    for trial in finished_trials():
        study.add_trial(trial)
    ledger = optuna.create_study(storage=url, study_name=tickets.TICKETS_PREFIX + "quickstart/adam")
    for state in (
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.FAIL,
        TrialState.RUNNING,
    ):  # released, refused, lost, held
        ledger.add_trial(optuna.trial.create_trial(state=state, value=0.0 if state == TrialState.COMPLETE else None))
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=1)
    look = Tickets(storage, optuna.load_study(study_name="quickstart/adam", storage=storage)).take(5, 5, set())
    assert [t.number for t in look.tickets] == [
        4,
        5,
    ] and look.counted == 3  # the trials' own; the ledger's tickets count for nothing
    assert optuna.get_all_study_names(storage) == ["quickstart/adam"]
