"""The final evaluation: a study's best config re-trained on fresh seeds, with test values, stored in the study."""

from __future__ import annotations

import math
import time
from typing import Any

import optuna

from tuner.config.export import config_from_dict
from tuner.measure import bias_correction, step_sizes
from tuner.measure.peak_memory import peak_step_bytes
from tuner.measure.state_memory import state_bytes_per_parameter
from tuner.measure.untrained import untrained_objective
from tuner.study.outcomes import best_trial
from tuner.tasks.task import Data, Task, is_loop
from tuner.train.results import RunResult, columns
from tuner.train.trainer import train


def final_evaluation(study: optuna.Study, task: Task, data: Data, seeds: list[int]) -> dict[str, Any] | None:
    """Re-train ``study``'s best config on ``seeds`` with test evaluation; stored in the study's user attribute
    ``final`` and reused while the best trial and the seeds are the same. None while no trial has completed.

    The result holds, per seed, the status, the validation and test objective and metric (NaN where none), and the
    learning curve. Each seed's run records its step sizes (:class:`tuner.measure.step_sizes.StepSizes`; None for a
    task with its own loop) under ``step_sizes``; an Adam or AdamW config is also re-trained with its bias correction
    off (:func:`tuner.measure.bias_correction.ablate`); the peak memory of its first step is measured
    (:func:`tuner.measure.peak_memory.peak_step_bytes`), and what the report shows beside the trials: the optimizer's
    state bytes per parameter and the untrained model's validation and test objective (``untrained``).
    """
    best = best_trial(study)
    if best is None:
        return None
    cached = study.user_attrs.get("final")
    if cached and cached["trial"] == best.number and cached["seeds"] == seeds:
        return cached
    config = config_from_dict(best.user_attrs["config"])
    runs, started, probes = [], [], []
    for seed in seeds:
        started.append(time.time())
        probes.append(step_sizes.probe(task, data, config))
        runs.append(train(task, data, config, seed=seed, test=True, step_hook=probes[-1]))
    final = {
        "trial": best.number,
        "seeds": seeds,
        "started": started,
        "status": [run.status for run in runs],
        "val_objective": [run.history[-1].objective(config.objective) for run in runs],
        "val_metric": [run.history[-1].val_metric for run in runs],
        "test_objective": [test_objective(run, config.objective) for run in runs],
        "test_metric": [math.nan if run.test_metric is None else run.test_metric for run in runs],
        "history": [columns(run.history) for run in runs],
        "step_sizes": None if None in probes else [probe.result() for probe in probes if probe is not None],
        "bias_correction_off": bias_correction.ablate(task, data, config, seeds),
        "peak_step_bytes": peak_step_bytes(task, data, config),
        # The report reads these instead of building the task again (tuner.report.measured).
        "state_bytes_per_param": state_bytes_per_parameter(task, data, config),
    }
    if not is_loop(task):  # a task with its own loop keeps its model inside its fit
        final["untrained"] = {
            split: untrained_objective(task, data, config.seed, config.objective, split) for split in ("val", "test")
        }
    study.set_user_attr("final", final)
    return final


def test_objective(run: RunResult, objective: str) -> float:
    """``run``'s test loss (``objective`` ``loss``) or test metric; NaN if it has none."""
    value = run.test_loss if objective == "loss" else run.test_metric
    return math.nan if value is None else value
