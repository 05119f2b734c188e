"""What a stored trial's outcome is; light (Optuna only), so that the MLflow follower process need not import torch.

Trial outcomes are kept in the user attribute ``outcome``:

=========== =============== =====================================================
outcome     Optuna state    counts toward the budget
=========== =============== =====================================================
complete    COMPLETE        yes
pruned      PRUNED          yes
diverged    PRUNED          yes; NaN reported at the diverged epoch, so TPE ranks
                            it with the bad trials (below every complete trial,
                            and below pruned trials that reached the same
                            epoch); a FAIL state would be ignored by TPE
failed      FAIL            yes (an exception in the task's code; ``reason``)
interrupted FAIL            no: Ctrl-C; or a trial whose worker was killed (its
                            RUNNING trial stops beating and is failed, with no
                            outcome, ``GRACE_SECONDS`` later)
running     RUNNING         holds a slot of the budget while it trains
=========== =============== =====================================================
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


COUNTED = ("complete", "pruned", "diverged", "failed")


def outcome(trial: optuna.trial.FrozenTrial) -> str:
    """complete, pruned, diverged, failed, interrupted or running."""
    return outcome_of(trial.state, trial.user_attrs.get("outcome"))


def outcome_of(state: TrialState, stored: str | None) -> str:
    """The outcome of a trial in ``state`` whose user attribute ``outcome`` is ``stored`` (None: none)."""
    if state == TrialState.RUNNING:
        return "running"
    return stored or ("complete" if state == TrialState.COMPLETE else "interrupted")


def counts(study: optuna.Study) -> dict[str, int]:
    """How many of ``study``'s trials have each outcome (every outcome a key, 0 if none)."""
    tally = dict.fromkeys(("complete", "pruned", "diverged", "failed", "interrupted", "running"), 0)
    for trial in study.get_trials(deepcopy=False):
        tally[outcome(trial)] += 1
    return tally


def finished(study: optuna.Study) -> int:
    """How many of ``study``'s trials count toward the budget (complete, pruned, diverged or failed)."""
    tally = counts(study)
    return sum(tally[kind] for kind in COUNTED)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """``study``'s best complete trial; None while no trial has completed."""
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None
