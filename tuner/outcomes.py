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
interrupted FAIL            no: Ctrl-C (a killed process stores nothing)
=========== =============== =====================================================
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def outcome(trial: optuna.trial.FrozenTrial) -> str:
    """complete, pruned, diverged, failed, interrupted or running."""
    if trial.state == TrialState.RUNNING:
        return "running"
    return trial.user_attrs.get("outcome") or ("complete" if trial.state == TrialState.COMPLETE else "interrupted")
