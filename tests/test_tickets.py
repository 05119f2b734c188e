"""Budget tickets taken several at once stay exact, one thread keeps them alive, and trials written whole equal Optuna's own."""

from __future__ import annotations

import math
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from tuner import tickets
from tuner.tickets import Tickets, write_trials


@pytest.fixture
def storage(tmp_path):
    # A second's grace: a worker that does not beat is dead after it.
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/t.db", heartbeat_interval=1, grace_period=1)


def finished_trials() -> list[optuna.trial.FrozenTrial]:
    """Trials of every kind a study stores: complete, pruned (a NaN and an inf among the epochs), failed; the TPE sampler's own attributes."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, constant_liar=True, n_startup_trials=1))
    ends = [(TrialState.COMPLETE, 0.5, [0.9, 0.7]), (TrialState.PRUNED, None, [1.0, math.inf, math.nan]), (TrialState.FAIL, None, []),
            (TrialState.COMPLETE, -math.inf, [2.0])]
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


def test_trials_written_whole_read_back_as_optunas_own(storage):
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
    trials = finished_trials()
    for trial in trials[:2]:
        storage.create_new_trial(study_id, template_trial=trial)
    written = write_trials(storage, study_id, trials)
    assert [number for _, number in written] == [2, 3, 4, 5]
    stored = storage.get_all_trials(study_id)
    assert [t._trial_id for t in stored[2:]] == [trial_id for trial_id, _ in written]
    fields = ("state", "values", "params", "distributions", "user_attrs", "system_attrs", "datetime_start", "datetime_complete")
    for ours, theirs in ((stored[2], stored[0]), (stored[3], stored[1])):  # the same trial, written both ways
        assert all(getattr(ours, f) == getattr(theirs, f) for f in fields)
        assert str(ours.intermediate_values) == str(theirs.intermediate_values)  # nan != nan
    for ours, trial in zip(stored[2:], trials):
        assert all(getattr(ours, f) == getattr(trial, f) for f in fields)


def test_tickets_taken_at_once_never_exceed_the_budget(storage):
    stored = {"n": 0}
    first, second = Tickets(storage, "s"), Tickets(storage, "s")
    assert len(first.take(3, 5, lambda: stored["n"])) == 3
    held = second.take(4, 5, lambda: stored["n"])
    assert len(held) == 2 and first.take(1, 5, lambda: stored["n"]) == []
    # A trial stored moves its slot from the ticket to the count, in one transaction.
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
    (trial_id,) = second.settle(study_id, [(finished_trials()[0], held[0])])
    stored["n"] += 1
    assert storage.get_trial(trial_id).value == 0.5 and first.take(1, 5, lambda: stored["n"]) == []
    second.release(held[1:])  # handed back without a trial
    assert len(first.take(2, 5, lambda: stored["n"])) == 1


def test_a_ticket_is_refused_when_others_filled_the_budget_while_it_was_taken(storage):
    # The count is read before the tickets are written and again after: trials stored in between refuse the last ones.
    counts = iter([0, 3])
    taken = Tickets(storage, "s").take(4, 5, lambda: next(counts))
    assert [t.number for t in taken] == [0, 1]
    ledger = storage.get_all_trials(storage.get_study_id_from_name(tickets.TICKETS_PREFIX + "s"))
    assert [t.state for t in ledger] == [TrialState.RUNNING] * 2 + [TrialState.PRUNED] * 2  # refused, not lost


def test_one_thread_keeps_every_live_ticket_alive_and_a_dead_workers_slots_come_back(storage, monkeypatch):
    monkeypatch.setattr(tickets, "HEARTBEAT_SECONDS", 0.3)
    alive, dead, other = Tickets(storage, "s"), Tickets(storage, "s"), Tickets(storage, "s")
    threads = threading.active_count()
    with alive:
        assert threading.active_count() == threads + 1
        assert len(alive.take(3, 5, lambda: 0)) == 3
        assert len(dead.take(2, 5, lambda: 0)) == 2  # never beats, as after kill -9
        assert threading.active_count() == threads + 1
        time.sleep(2.5)
        # The dead worker's two tickets are failed as stale, the living one's three are not.
        assert len(other.take(5, 5, lambda: 0)) == 2
    assert threading.active_count() == threads
    assert len(other.take(5, 5, lambda: 0)) == 3  # closing released the living worker's tickets
