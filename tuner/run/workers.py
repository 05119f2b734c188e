"""``tuner study --jobs N``: N worker processes train an experiment's studies at once, sharing its storage.

Each worker is a spawned process that loads the experiment and the task by
itself, on its own device — CUDA devices round-robin (``cuda``, or ``auto`` on
a CUDA machine, spreads over every GPU; ``cuda:1`` keeps all on that one), on a
CPU the cores split evenly — and runs every study to its budget in turn. The
budget tickets of :class:`tuner.study.budget.Tickets` keep each budget exact. The
parent process trains nothing: each trial a worker stores comes back as its
storage id on a queue, for the progress bars and the MLflow follower.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
import queue
import sys
from collections.abc import Callable
from typing import Any

import torch

# How long the parent waits for workers to finish their trial after Ctrl-C (seconds).
STOP_SECONDS = 60


def worker_devices(device: torch.device, jobs: int, explicit: bool) -> list[str]:
    """The device of each worker: CUDA devices round-robin unless one was named (``explicit``), else all on
    ``device``."""
    if device.type == "cuda" and not explicit:
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(jobs)]
    return [str(device)] * jobs


def run_workers(
    jobs: int,
    prepare: Callable[[Any, str], tuple[Any, Any, Any, Any]],
    args: Any,
    device: torch.device,
    on_trial: Callable[[str, int], None],
) -> list[str]:
    """Train every study of ``args``'s experiment to its budget with ``jobs`` worker processes.

    ``prepare(args, device)`` loads what a worker needs (see ``tuner.run.experiment.prepare``);
    ``on_trial(study_name, trial_id)`` runs in this process for every trial a worker stored.
    Returns the workers that ended early (killed, crashed), named with their exit code: what
    they left undone is for the caller to top up. A worker that stopped on bad input (exit
    code 2: a study whose every trial fails) is not among them: the caller meets the same.
    """
    context = multiprocessing.get_context("spawn")  # fork would copy torch's threads and locks
    trials: multiprocessing.Queue = context.Queue()
    threads = getattr(args, "threads", None) or max(1, (os.cpu_count() or 1) // jobs)
    explicit = args.device not in ("auto", "cuda")
    workers = [
        context.Process(target=_work, args=(prepare, args, name, threads, trials), name=f"tuner-worker-{i}")
        for i, name in enumerate(worker_devices(device, jobs, explicit))
    ]
    for worker in workers:
        worker.start()
    try:
        while True:
            try:
                on_trial(*trials.get(timeout=0.2))
            except queue.Empty:
                if not any(worker.is_alive() for worker in workers) and trials.empty():
                    break
    finally:
        # After Ctrl-C the workers (same terminal, same signal) store their
        # current trial as interrupted and exit.
        for worker in workers:
            worker.join(STOP_SECONDS)
            if worker.is_alive():
                worker.terminate()
    return [f"{w.name} (exit code {w.exitcode})" for w in workers if w.exitcode not in (0, 2)]


def _work(
    prepare: Callable[[Any, str], tuple[Any, Any, Any, Any]], args: Any, device: str, threads: int, trials: Any
) -> None:
    """One worker: every study of the experiment, in turn, to its budget."""
    import logging

    import optuna

    from tuner.errors import UserError
    from tuner.study.connection import open_storage
    from tuner.study.runner import StudyRunner, population_of

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("tuner").setLevel(logging.ERROR)  # warnings (tuner.study.storage's) are said once, by the parent
    try:
        # Without --threads the workers split the cores (run_workers).
        experiment, task, setup, data = prepare(dataclasses.replace(args, threads=threads), device)
        # The parent said why, if fewer.
        population, _ = population_of(experiment, setup, task, data, share=1 / args.jobs)
        storage = open_storage(args.storage)
        for space in experiment.optimizers:
            runner = StudyRunner(experiment, space, setup, task, data, storage)
            runner.run_batched(experiment.trials, population, functools.partial(_put, trials, runner.name))
    except KeyboardInterrupt:
        sys.exit(130)
    except UserError:  # said once, by the parent, which meets it when it tops the study up
        sys.exit(2)


def _put(trials: Any, study: str, trial: Any, trial_id: int) -> None:
    """A worker's callback for each stored trial: its storage id goes to the parent, with its study's name."""
    trials.put((study, trial_id))
