"""The study runner: one optimizer's study topped up to its budget, a trial (or a population) at a time.

Trials train against an in-memory copy of the study and reach the storage once, whole, when they end; budget slots
are :mod:`tuner.study.budget`'s, resume :mod:`tuner.study.resume`'s, and trial outcomes (complete, pruned, diverged,
failed, interrupted) :mod:`tuner.study.outcomes`'.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import math
import os
import socket
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from tuner.batched.memory import population_that_fits
from tuner.batched.trainer import Key, train_batched
from tuner.config.experiment import Config, Experiment
from tuner.config.export import config_to_dict
from tuner.config.spaces import SearchSpace
from tuner.errors import UserError, reason
from tuner.study import spaces
from tuner.study.budget import Tickets
from tuner.study.components import make_pruner, make_sampler
from tuner.study.final import final_evaluation, test_objective
from tuner.study.outcomes import FINISHED, outcome
from tuner.study.resume import Setup, check_resumable, study_name
from tuner.study.storage import Ticket
from tuner.tasks.task import Data, Task
from tuner.train.results import EpochMetrics, RunResult, columns
from tuner.train.trainer import train

# How long a worker waits before looking again when every slot left is held.
WAIT_SECONDS = 0.5
# A study whose first FAIL_LIMIT trials all failed the same way stops: the task
# is broken for every config, and more trials would only spend the budget.
FAIL_LIMIT = 3


def population_of(
    experiment: Experiment, setup: Setup, task: Task, data: Data, share: float = 1.0
) -> tuple[int, str | None]:
    """The population of each study (how many trials it trains together): the experiment's ``population`` (at most
    ``trials``), or fewer with the one line that says why (see :func:`tuner.batched.memory.population_that_fits`;
    ``share``: this worker's part of the device's memory, default all of it)."""
    optimizers = [space.optimizer for space in experiment.optimizers]
    return population_that_fits(
        task, data, min(experiment.population, experiment.trials), setup.batch_size, setup.amp, optimizers, share
    )


class StudyRunner:
    """Runs one optimizer's study (``<experiment>/<space>`` in ``storage``) up to its budget; resumable at any point.

    Creates the study if missing, recording its setup. Raises :class:`UserError` if it exists and was run with
    another setup or search space (:func:`tuner.study.resume.check_resumable`), or for a bad pruner argument.
    """

    def __init__(
        self,
        experiment: Experiment,
        space: SearchSpace,
        setup: Setup,
        task: Task,
        data: Data,
        storage: optuna.storages.RDBStorage,
    ) -> None:
        self.experiment, self.space, self.setup, self.task, self.data = experiment, space, setup, task, data
        self.storage = storage
        self.name = study_name(experiment, space)
        check_resumable(storage, self.name, setup, space, experiment.schedules)
        self.study = optuna.create_study(
            storage=storage, study_name=self.name, direction=setup.study_direction, load_if_exists=True
        )
        if "setup" not in self.study.user_attrs:
            self.study.set_user_attr("setup", setup.stored(space, experiment.schedules))
        if "uid" not in self.study.user_attrs:  # tells this study from one deleted and created again under its name
            self.study.set_user_attr("uid", uuid.uuid4().hex)
        # optuna-dashboard and trials_dataframe name the objective by it ("Objective 0" without).
        if self.study.metric_names is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names([f"val_{setup.label}"])
        # Trials run against an in-memory copy of the study and reach the storage once, whole, when they end (into
        # the RUNNING trial that held their budget slot, see tuner.study.storage). A report and a pruning decision
        # per epoch on SQLite cost about 10 ms (SQLAlchemy), as much as an epoch of a small model; in memory they
        # cost about 0.1 ms. The sampler and the pruner see the same trials either way, and a run killed mid-trial
        # leaves no trial half-written, only its slot (failed once it stops beating). Trials that other workers
        # stored join the copy before each new trial (take()).
        self.live = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(),
            study_name=self.name,
            direction=setup.study_direction,
            pruner=make_pruner(experiment.pruner, setup.epochs, experiment.at("pruner")),
        )
        self.known: set[int] = set()  # stored numbers of the trials in the live copy
        self.stored_numbers: list[int] = []  # by live number: the trial's number in the storage
        self.counted = 0  # trials that count toward the budget, at the last look
        self.tickets = Tickets(storage, self.study)

    def take(self, n: int, budget: int) -> list[Ticket]:
        """Up to ``n`` budget tickets of ``budget`` (fewer, or none, when the slots left are held), in one read of the
        storage; the trials other workers stored meanwhile join the live copy (a second read, only then)."""
        look = self.tickets.take(n, budget, self.known)
        for trial in look.joined:
            self.live.add_trial(trial)
            self.stored_numbers.append(trial.number)
            self.known.add(trial.number)
        self.counted = look.counted
        return look.tickets

    def _sample(self, trial: optuna.Trial) -> Config:
        schedule, schedule_params = spaces.sample_schedule(trial, self.experiment.schedules)
        shared = {k: v for k, v in dataclasses.asdict(self.setup).items() if k not in ("direction", "metric")}
        return Config(
            optimizer=self.space.optimizer,
            optimizer_kwargs=spaces.sample_optimizer(trial, self.space),
            schedule=schedule,
            schedule_params=schedule_params,
            **shared,
        )

    def _ask(self, ticket: Ticket) -> tuple[optuna.Trial, Config]:
        """A new trial of the live study and its config, recorded in its user attributes with the device and the
        process that trains it (``worker``: host:pid)."""
        # Seeded by the trial's budget ticket: reproducible for one worker,
        # different for each of several, and no replay of earlier suggestions on resume.
        self.live.sampler = make_sampler(
            self.experiment.sampler, self.experiment.seed + ticket.number, self.experiment.at("sampler")
        )
        trial = self.live.ask()
        self.stored_numbers.append(ticket.number)
        config = self._sample(trial)
        trial.set_user_attr("config", config_to_dict(config))
        trial.set_user_attr("device", str(self.data.device))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        # The expected-best curve assumes random-search trials: the report says which sampler drew them.
        trial.set_user_attr("sampler", self.experiment.sampler.name)
        return trial, config

    def _report(self, trial: optuna.Trial, metrics: EpochMetrics) -> bool:
        """Report an epoch's objective to ``trial``; whether the pruner stops it."""
        trial.report(metrics.objective(self.setup.objective), metrics.epoch)
        # After the last epoch there is nothing left to save: the trial completes.
        return metrics.epoch < self.setup.epochs and trial.should_prune()

    def _failed(self, trial: optuna.Trial, err: Exception) -> bool:
        """Record why ``trial`` failed (call in the ``except`` block: the traceback is the current one); returns whether
        the device ran out of memory (its cache is to be handed back once the traceback's tensors are released)."""
        out_of_memory = isinstance(err, torch.cuda.OutOfMemoryError)
        trial.set_user_attr("outcome", "failed")
        trial.set_user_attr("reason", ("out of memory: " if out_of_memory else "") + reason(err))
        trial.set_user_attr("traceback", traceback.format_exc())
        return out_of_memory

    def _interrupted(self, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
        trial.set_user_attr("outcome", "interrupted")
        return self.live.tell(trial, state=TrialState.FAIL)

    def run_trial(self, ticket: Ticket) -> tuple[optuna.trial.FrozenTrial, int]:
        """Ask, train, tell: one trial to its end, then stored into its budget ``ticket``; returns it (under its
        stored number) and its id in the storage. An exception in the task's code fails the trial and returns; Ctrl-C
        stores it as interrupted and raises :class:`KeyboardInterrupt` again."""
        trial, config = self._ask(ticket)
        try:
            result = train(
                self.task, self.data, config, callback=lambda metrics: self._report(trial, metrics), test=True
            )
        except KeyboardInterrupt:
            self._store([(self._interrupted(trial), ticket)])
            raise
        except Exception as err:  # the task's code may raise anything; the study goes on
            out_of_memory = self._failed(trial, err)
        else:
            return self._store([(self._tell(trial, result), ticket)])[0]
        if out_of_memory:
            _hand_back_cuda_memory()
        return self._store([(self.live.tell(trial, state=TrialState.FAIL), ticket)])[0]

    def _store(self, told: list[tuple[optuna.trial.FrozenTrial, Ticket]]) -> list[tuple[optuna.trial.FrozenTrial, int]]:
        """Write finished trials into their tickets, whole, in one transaction; returns each under its stored number,
        with its storage id."""
        stored = []
        for (trial, _), (trial_id, number) in zip(told, self.tickets.settle(told)):
            self.known.add(number)
            self.stored_numbers[trial.number] = number
            stored.append((_renumbered(trial, number), trial_id))
        return stored

    def _tell(self, trial: optuna.Trial, result: RunResult) -> optuna.trial.FrozenTrial:
        # Optuna keeps only the objective per epoch; the whole learning curve goes with the trial.
        trial.set_user_attr("history", columns(result.history))
        if result.status == "diverged":
            trial.report(math.nan, result.history[-1].epoch)
            trial.set_user_attr("outcome", "diverged")
            trial.set_user_attr("reason", result.reason)
            return self.live.tell(trial, state=TrialState.PRUNED)
        if result.status == "stopped":
            trial.set_user_attr("outcome", "pruned")
            return self.live.tell(trial, state=TrialState.PRUNED)
        trial.set_user_attr("outcome", "complete")
        # Never used to pick: the report's test CPE scores the config picked on validation by its test value
        # (Sivaprasad et al. 2020).
        trial.set_user_attr("test_objective", test_objective(result, self.setup.objective))
        return self.live.tell(trial, result.history[-1].objective(self.setup.objective))

    def run(self, budget: int, on_trial: Callable[[optuna.trial.FrozenTrial, int], None] | None = None) -> optuna.Study:
        """Top the study up to ``budget`` counted trials, never beyond, however many workers share it;
        ``on_trial(trial, trial_id)`` after each trial this worker stored (default: none). Returns the stored study.

        Raises :class:`UserError` once at least ``FAIL_LIMIT`` counted trials all failed for one reason (the task is
        broken); :class:`KeyboardInterrupt` after storing the trial in training as interrupted.
        """
        with self.tickets:
            while True:
                tickets = self.take(1, budget)
                if not tickets and self.counted >= budget:
                    break
                if not tickets:  # every slot left is being trained by another worker: wait for one to end
                    time.sleep(WAIT_SECONDS)
                    continue
                stored = self.run_trial(tickets[0])
                if on_trial is not None:
                    on_trial(*stored)
                self._stop_if_broken()
        return self.study

    def _stop_if_broken(self) -> None:
        """Raise :class:`UserError` if the study's trials that count, at least ``FAIL_LIMIT``, all failed for one
        reason."""
        counted = [t for t in self.live.get_trials(deepcopy=False, states=FINISHED) if outcome(t) != "interrupted"]
        reasons = {t.user_attrs.get("reason") for t in counted}
        if len(counted) < FAIL_LIMIT or len(reasons) > 1 or any(outcome(t) != "failed" for t in counted):
            return
        last = self.stored_numbers[max(t.number for t in counted)]
        raise UserError(
            f"study {self.name!r}: all {len(counted)} of its trials failed the same way, "
            "so it stops instead of spending its budget: "
            f"{reasons.pop()} (traceback: trial {last}'s user attribute 'traceback', MLflow tag tuner.traceback; "
            "fix the task and run the same command: the failed trials count toward the budget)"
        )

    def run_batched(
        self, budget: int, population: int, on_trial: Callable[[optuna.trial.FrozenTrial, int], None] | None = None
    ) -> optuna.Study:
        """:meth:`run`, training a population of up to ``population`` trials together (see
        :mod:`tuner.batched.trainer`); 1 is :meth:`run`.

        Each member reports its epochs to its own trial and is pruned alone; it
        is told as :meth:`run_trial` does, and its slot goes to a newly asked
        trial, with its own budget ticket, while the budget has room. Members
        that end at the same epoch are stored together, and the tickets for
        their slots taken together, in one transaction each. An exception in
        the task's code fails the members training then and the study goes
        on; Ctrl-C stores them as interrupted. Raises as :meth:`run` does, and
        re-raises an error of the storage or the sampler (their tickets go back).
        """
        if population == 1:
            return self.run(budget, on_trial)
        running: dict[Key, tuple[optuna.Trial, Ticket]] = {}  # by trial number
        asked = 0

        def start(n: int) -> list[tuple[int, Config]]:
            nonlocal asked
            entries = []
            for ticket in self.take(n, budget):
                trial, config = self._ask(ticket)
                running[trial.number] = trial, ticket
                entries.append((trial.number, config))
            asked += len(entries)
            return entries

        def finish(
            numbers: Sequence[Key], tell: Callable[[optuna.Trial], optuna.trial.FrozenTrial]
        ) -> list[tuple[optuna.trial.FrozenTrial, int]]:
            return self._store([(tell(running[number][0]), running.pop(number)[1]) for number in numbers])

        def end(numbers: Sequence[Key], tell: Callable[[optuna.Trial], optuna.trial.FrozenTrial]) -> None:
            for stored in finish(numbers, tell):
                if on_trial is not None:
                    on_trial(*stored)

        def ended(results: list[tuple[int, RunResult]]) -> None:
            by_number = dict(results)
            end(list(by_number), lambda trial: self._tell(trial, by_number[trial.number]))

        with self.tickets:
            while True:
                before = asked
                try:
                    train_batched(
                        self.task,
                        self.data,
                        population,
                        _own(start),
                        lambda number, metrics: self._report(running[number][0], metrics),
                        _own(ended),
                        test=True,
                    )
                except KeyboardInterrupt:
                    finish(list(running), self._interrupted)
                    raise
                # The storage or the sampler failed, not the task: no trial is to blame (their tickets go back).
                except _OwnError as err:
                    raise err.error from None
                except Exception as err:  # the task's code may raise anything; the study goes on
                    out_of_memory = any(self._failed(trial, err) for trial, _ in running.values())
                else:
                    if asked == before and self.counted >= budget:
                        break
                    if asked == before:  # every slot left is being trained by another worker: wait for one to end
                        time.sleep(WAIT_SECONDS)
                    continue
                if out_of_memory:
                    _hand_back_cuda_memory()
                end(list(running), lambda trial: self.live.tell(trial, state=TrialState.FAIL))
                self._stop_if_broken()
        return self.study

    def final_evaluation(self, seeds: list[int]) -> dict[str, Any] | None:
        """The study's final evaluation on ``seeds`` (see :func:`tuner.study.final.final_evaluation`)."""
        return final_evaluation(self.study, self.task, self.data, seeds)


class _OwnError(Exception):
    """An error of the study's own bookkeeping (storage, sampler) inside a population's callbacks: not the task's."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


def _own(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with its exceptions raised as :class:`_OwnError` (the original as its cause)."""

    def wrapped(*args: Any) -> Any:
        try:
            return function(*args)
        except Exception as err:
            raise _OwnError(err) from err

    return wrapped


def _renumbered(trial: optuna.trial.FrozenTrial, number: int) -> optuna.trial.FrozenTrial:
    """A copy of ``trial`` (of the live copy) under its number in the storage, the one users see."""
    stored = copy.copy(trial)
    stored.number = number
    return stored


def _hand_back_cuda_memory() -> None:
    # The exception is gone, and with it the frames that held the trial's
    # tensors: hand their cached blocks back so the next trial can use them.
    gc.collect()
    torch.cuda.empty_cache()
