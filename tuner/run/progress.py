"""The progress bar of one study during ``tuner study``: trials of the budget, the best so far, elapsed time and ETA."""

from __future__ import annotations

from typing import Any


class Progress:
    """A tqdm bar for one study: trials counted of the budget, best so far, elapsed and ETA."""

    def __init__(
        self, name: str, study: Any, budget: int, direction: str, disable: bool, position: int | None = None
    ) -> None:
        from tqdm.auto import tqdm

        from tuner.study.outcomes import best_trial, finished

        self.name, self.sign = name, -1.0 if direction == "maximize" else 1.0
        self.best = best_trial(study)
        self.bar = tqdm(
            total=budget,
            initial=min(finished(study), budget),
            desc=name,
            unit="trial",
            disable=disable,
            dynamic_ncols=True,
            position=position,
        )
        self._show_best()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the bar (it stays on screen)."""
        self.bar.close()

    def _show_best(self) -> None:
        if self.best is not None:
            self.bar.set_postfix_str(f"best {self.best.value:.4g} (#{self.best.number})", refresh=False)

    def __call__(self, trial: Any) -> None:
        from optuna.trial import TrialState

        from tuner.study.outcomes import outcome

        if outcome(trial) == "failed":
            self.bar.write(f"{self.name} trial {trial.number} failed: {trial.user_attrs.get('reason')}")
        best = None if self.best is None else self.best.value
        if trial.state == TrialState.COMPLETE and (best is None or self.sign * trial.value < self.sign * best):
            self.best = trial
            self._show_best()
        self.bar.update(1)
