"""Optuna glue: one study per (experiment, optimizer), its budget, resume and final evaluation.

Trial outcomes (complete, pruned, diverged, failed, interrupted) are described in :mod:`tuner.study.outcomes`.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import inspect
import json
import math
import os
import socket
import time
import traceback
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from tuner.batched.memory import population_that_fits
from tuner.batched.trainer import train_batched
from tuner.config.experiment import Component, Config, Experiment, ScheduleSpace, SearchSpace, check_type
from tuner.config.export import config_from_dict, config_to_dict
from tuner.errors import UserError, mask_url, reason, sqlite_file, url_failure
from tuner.measure import bias_correction, step_sizes
from tuner.measure.peak_memory import peak_step_bytes
from tuner.study import spaces
from tuner.study.budget import GRACE_SECONDS, HEARTBEAT_SECONDS, TICKETS_PREFIX, Ticket, Tickets
from tuner.study.outcomes import FINISHED, outcome
from tuner.tasks.task import Data, Task
from tuner.train.trainer import EpochMetrics, RunResult, columns, objective_label, train

# How long a worker waits before looking again when every slot left is held.
WAIT_SECONDS = 0.5
SQLITE_LOCK_SECONDS = 60
CREATE_ATTEMPTS = 3
# A study whose first FAIL_LIMIT trials all failed the same way stops: the task
# is broken for every config, and more trials would only spend the budget.
FAIL_LIMIT = 3


def open_storage(url: str, must_exist: bool = False) -> optuna.storages.BaseStorage:
    """The Optuna RDB storage at ``url`` (any SQLAlchemy URL), created if missing unless ``must_exist``."""
    if must_exist and url.startswith("sqlite:") and not _sqlite_file_exists(url):
        raise UserError(
            f"--storage: {url!r} does not exist (allowed: the storage a `tuner study` wrote, e.g. sqlite:///tuner.db)"
        )
    # SQLite: a writer waits for another's lock (several workers on one file)
    # instead of failing with "database is locked" after pysqlite's 5 s.
    engine = {"connect_args": {"timeout": SQLITE_LOCK_SECONDS}} if url.startswith("sqlite") else None
    for attempt in range(CREATE_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", optuna.exceptions.ExperimentalWarning
                )  # heartbeats: stable enough for us
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS
                )
        except Exception as err:  # SQLAlchemy raises many kinds for a bad URL or server
            # Workers that start together race to create the tables: the losers try again.
            if type(err).__name__ in ("OperationalError", "IntegrityError") and attempt < CREATE_ATTEMPTS - 1:
                time.sleep(1.0)
                continue
            failure = err
            break
    # Optuna hides which driver is missing; PostgreSQL's is the one tuner documents.
    driver = (
        " (the database driver is missing: pip install 'tuner[postgresql]' for postgresql://)"
        if isinstance(failure, ImportError)
        else ""
    )
    raise UserError(
        f"--storage: cannot open {mask_url(url)!r}: {url_failure(failure, url)}{driver} "
        "(allowed: an SQLAlchemy URL such as sqlite:///tuner.db or postgresql://user:password@host/db)"
    ) from None


def _sqlite_file_exists(url: str) -> bool:
    database = sqlite_file(url)
    return bool(database) and os.path.isfile(database)


def _build(where: str, cls: type, component: Component, **defaults: Any) -> Any:
    signature = inspect.signature(cls).parameters
    for key, value in component.kwargs.items():
        if key in signature:  # ``n_startup_trials: true`` would run with 1
            default = signature[key].default
            check_type(
                f"{where}: {component.name}.{key}", value, None if default is inspect.Parameter.empty else default
            )
    try:
        return cls(**(defaults | component.kwargs))
    except (TypeError, ValueError) as err:
        allowed = list(inspect.signature(cls).parameters)
        raise UserError(
            f"{where}: {component.name} {component.kwargs}: {err} (allowed arguments: {', '.join(allowed)})"
        ) from None


def make_sampler(component: Component, seed: int, where: str = "sampler") -> optuna.samplers.BaseSampler:
    """``tpe`` (multivariate, grouped: the schedule parameters are conditional), ``random`` or ``qmc``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if component.name == "tpe":
            return _build(
                where,
                optuna.samplers.TPESampler,
                component,
                seed=seed,
                multivariate=True,
                group=True,
                constant_liar=True,
            )
        if component.name == "random":
            return _build(where, optuna.samplers.RandomSampler, component, seed=seed)
        return _build(
            where, optuna.samplers.QMCSampler, component, seed=seed, scramble=True, warn_independent_sampling=False
        )


def make_pruner(component: Component, epochs: int, where: str = "pruner") -> optuna.pruners.BasePruner:
    """``median`` (after 5 complete trials and 1/4 of the epochs), ``hyperband`` or ``none``."""
    if component.name == "median":
        return _build(
            where, optuna.pruners.MedianPruner, component, n_startup_trials=5, n_warmup_steps=max(1, epochs // 4)
        )
    if component.name == "hyperband":
        return _build(
            where, optuna.pruners.HyperbandPruner, component, min_resource=1, max_resource=epochs, reduction_factor=3
        )
    return _build(where, optuna.pruners.NopPruner, component)


@dataclass(frozen=True)
class Setup:
    """What every trial of a study shares; a study resumed with another setup is refused."""

    task: str
    task_args: dict[str, Any]
    epochs: int
    batch_size: int
    seed: int
    objective: str
    direction: str
    metric: str
    amp: str = "none"

    @property
    def label(self) -> str:
        """The objective's name for people: ``loss`` or the task's metric (``accuracy``)."""
        return objective_label(self.objective, self.metric)

    @classmethod
    def resolve(cls, experiment: Experiment, task: Task, amp: str = "none") -> Setup:
        """The setup of ``experiment`` on ``task``, with mixed precision ``amp`` (``none`` or ``bf16``)."""
        objective = experiment.objective
        if objective in ("metric", task.metric) and objective != "loss":
            objective, natural = "metric", task.direction
        elif objective == "loss":
            natural = "minimize"
        else:
            raise UserError(
                f"{experiment.at('objective')}: {objective!r} is not allowed (loss, metric or {task.metric!r})"
            )
        return cls(
            task=experiment.task,
            task_args=experiment.task_args,
            epochs=experiment.epochs,
            batch_size=experiment.batch_size or task.batch_size,
            seed=experiment.seed,
            objective=objective,
            direction=experiment.direction or natural,
            metric=task.metric,
            amp=amp,
        )

    def stored(self, space: SearchSpace, schedules: ScheduleSpace) -> dict[str, Any]:
        """What a study records of its setup, to refuse resuming it with another (JSON-safe)."""
        searched = {
            "optimizer": space.optimizer,
            "space": [dataclasses.asdict(p) for p in space.params],
            "schedules": {name: [dataclasses.asdict(p) for p in params] for name, params in schedules.params.items()},
        }
        return json.loads(json.dumps(dataclasses.asdict(self) | searched))


def check_components(experiment: Experiment, setup: Setup) -> None:
    """Try the sampler and pruner on a throwaway study, so that a bad argument fails before any study exists."""
    if "seed" in experiment.sampler.kwargs:
        raise UserError(
            f"{experiment.at('sampler')}: 'seed' is not allowed here (the experiment's seed seeds the sampler)"
        )
    for name, sampler, pruner in (
        (
            "sampler",
            make_sampler(experiment.sampler, experiment.seed, experiment.at("sampler")),
            optuna.pruners.NopPruner(),
        ),
        (
            "pruner",
            optuna.samplers.RandomSampler(seed=0),
            make_pruner(experiment.pruner, setup.epochs, experiment.at("pruner")),
        ),
    ):
        component = experiment.sampler if name == "sampler" else experiment.pruner
        study = optuna.create_study(direction=setup.direction, sampler=sampler, pruner=pruner)
        try:
            for number in range(3):
                trial = study.ask()
                trial.suggest_float("x", 1e-3, 1.0, log=True)
                trial.suggest_categorical("c", ["a", "b"])
                for epoch in range(1, min(setup.epochs, 3) + 1):
                    trial.report(float(number + epoch), epoch)
                    trial.should_prune()
                study.tell(trial, float(number))
        except Exception as err:  # Optuna checks some arguments only when they are used
            raise UserError(
                f"{experiment.at(name)}: {component.name} {component.kwargs}: {type(err).__name__}: {err}"
            ) from None


def population_of(
    experiment: Experiment, setup: Setup, task: Task, data: Data, share: float = 1.0
) -> tuple[int, str | None]:
    """The population of each study (how many trials it trains together): the experiment's ``population`` (at most
    ``trials``), or fewer with the one line that says why (see :func:`tuner.batched.memory.population_that_fits`; ``share``: this worker's part of the device's memory)."""
    spaces = [space.optimizer for space in experiment.optimizers]
    return population_that_fits(
        task, data, min(experiment.population, experiment.trials), setup.batch_size, setup.amp, spaces, share
    )


def check_resumable(
    storage: optuna.storages.BaseStorage, name: str, setup: Setup, space: SearchSpace, schedules: ScheduleSpace
) -> None:
    """Refuse to resume study ``name`` if its trials were run with another setup or search space; changes nothing."""
    if name not in optuna.get_all_study_names(storage):
        return
    found = optuna.load_study(study_name=name, storage=storage).user_attrs.get("setup")
    if (
        not found
    ):  # another worker created the study a moment ago and is writing its setup: the same as ours, or refused there
        return
    stored = {"amp": "none"} | found  # studies stored before amp existed ran without it
    changed = [
        f"{k}={stored.get(k)!r} -> {v!r}" if k not in ("space", "schedules") else f"{k} changed"
        for k, v in setup.stored(space, schedules).items()
        if stored.get(k) != v
    ]
    if changed:
        raise UserError(
            f"study {name!r} in {mask_url(str(storage.url))!r} was run with another setup "
            f"({'; '.join(changed)}): use another --storage or experiment name to start afresh"
        )


def experiment_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """The experiments that have studies in ``storage`` (a ledger study of an earlier version, not yet deleted, is none)."""
    return sorted(
        {
            n.split("/", 1)[0]
            for n in optuna.get_all_study_names(storage)
            if "/" in n and not n.startswith(TICKETS_PREFIX)
        }
    )


def study_name(experiment: Experiment, space: SearchSpace) -> str:
    return f"{experiment.name}/{space.name}"


def counts(study: optuna.Study) -> dict[str, int]:
    """How many trials ended in each outcome."""
    tally = dict.fromkeys(("complete", "pruned", "diverged", "failed", "interrupted", "running"), 0)
    for trial in study.get_trials(deepcopy=False):
        tally[outcome(trial)] += 1
    return tally


def finished(study: optuna.Study) -> int:
    """Trials that count toward the budget."""
    tally = counts(study)
    return tally["complete"] + tally["pruned"] + tally["diverged"] + tally["failed"]


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


class StudyRunner:
    """Runs one optimizer's study up to its budget; resumable at any point."""

    def __init__(
        self,
        experiment: Experiment,
        space: SearchSpace,
        setup: Setup,
        task: Task,
        data: Data,
        storage: optuna.storages.BaseStorage,
    ) -> None:
        self.experiment, self.space, self.setup, self.task, self.data = experiment, space, setup, task, data
        self.storage = storage
        self.name = study_name(experiment, space)
        check_resumable(storage, self.name, setup, space, experiment.schedules)
        self.study = optuna.create_study(
            storage=storage, study_name=self.name, direction=setup.direction, load_if_exists=True
        )
        if "setup" not in self.study.user_attrs:
            self.study.set_user_attr("setup", setup.stored(space, experiment.schedules))
        if "uid" not in self.study.user_attrs:  # tells this study from one deleted and created again under its name
            self.study.set_user_attr("uid", uuid.uuid4().hex)
        if (
            self.study.metric_names is None
        ):  # optuna-dashboard and trials_dataframe name the objective by it ("Objective 0" without)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names([f"val_{setup.label}"])
        # Trials run against an in-memory copy of the study and reach the
        # storage once, whole, when they end (into the RUNNING trial that
        # held their budget slot, see tuner.study.storage). A report and a pruning decision
        # per epoch on SQLite cost about 10 ms (SQLAlchemy), as much as an
        # epoch of a small model; in memory they cost about 0.1 ms. The sampler
        # and the pruner see the same trials either way, and a run killed
        # mid-trial leaves no trial half-written, only its slot (failed once
        # it stops beating). Trials that other
        # workers stored join the copy before each new trial (take()).
        self.live = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(),
            study_name=self.name,
            direction=setup.direction,
            pruner=make_pruner(experiment.pruner, setup.epochs, experiment.at("pruner")),
        )
        self.known: set[int] = set()  # stored numbers of the trials in the live copy
        self.stored_numbers: list[int] = []  # by live number: the trial's number in the storage
        self.counted = 0  # trials that count toward the budget, at the last look
        self.tickets = Tickets(storage, self.study)

    def take(self, n: int, budget: int) -> list[Ticket]:
        """Up to ``n`` budget tickets, in the storage's one read for them; the trials other workers stored meanwhile
        join the live copy."""
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
        """Ask, train, tell: one trial to its end, then stored and its budget ``ticket`` released; returns it and its id in the storage."""
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
        """Write finished trials into their tickets, whole, in one transaction; returns each under its stored number, with its storage id."""
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
        # Never used to pick: the report's test CPE scores the config picked on validation by its test value (Sivaprasad et al. 2020).
        trial.set_user_attr("test_objective", _test_objective(result, self.setup.objective))
        return self.live.tell(trial, result.history[-1].objective(self.setup.objective))

    def run(self, budget: int, on_trial: Callable[[optuna.trial.FrozenTrial, int], None] | None = None) -> optuna.Study:
        """Top the study up to ``budget`` counted trials, never beyond, however many workers share it;
        ``on_trial(trial, trial_id)`` after each trial this worker stored."""
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
        """Raise :class:`UserError` if the study's trials that count, at least ``FAIL_LIMIT``, all failed for one reason."""
        counted = [t for t in self.live.get_trials(deepcopy=False, states=FINISHED) if outcome(t) != "interrupted"]
        reasons = {t.user_attrs.get("reason") for t in counted}
        if len(counted) < FAIL_LIMIT or len(reasons) > 1 or any(outcome(t) != "failed" for t in counted):
            return
        last = self.stored_numbers[max(t.number for t in counted)]
        raise UserError(
            f"study {self.name!r}: all {len(counted)} of its trials failed the same way, so it stops instead of spending its budget: "
            f"{reasons.pop()} (traceback: trial {last}'s user attribute 'traceback', MLflow tag tuner.traceback; "
            "fix the task and run the same command: the failed trials count toward the budget)"
        )

    def run_batched(
        self, budget: int, population: int, on_trial: Callable[[optuna.trial.FrozenTrial, int], None] | None = None
    ) -> optuna.Study:
        """:meth:`run`, training a population of up to ``population`` trials together (see :mod:`tuner.batched.trainer`); 1 is :meth:`run`.

        Each member reports its epochs to its own trial and is pruned alone; it
        is told as :meth:`run_trial` does, and its slot goes to a newly asked
        trial, with its own budget ticket, while the budget has room. Members
        that end at the same epoch are stored together, and the tickets for
        their slots taken together, in one transaction each. An exception in
        the task's code fails the members training then and the study goes
        on; Ctrl-C stores them as interrupted.
        """
        if population == 1:
            return self.run(budget, on_trial)
        running: dict[int, tuple[optuna.Trial, Ticket]] = {}  # by trial number
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
            numbers: list[int], tell: Callable[[optuna.Trial], optuna.trial.FrozenTrial]
        ) -> list[tuple[optuna.trial.FrozenTrial, int]]:
            return self._store([(tell(running[number][0]), running.pop(number)[1]) for number in numbers])

        def end(numbers: list[int], tell: Callable[[optuna.Trial], optuna.trial.FrozenTrial]) -> None:
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
                except _OwnError as err:  # the storage or the sampler failed, not the task: no trial is to blame (their tickets go back)
                    raise err.__cause__ from None
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
        """Re-train the best config on ``seeds`` with test evaluation; stored in the study and reused.

        Each seed's run records its step sizes (:class:`tuner.measure.step_sizes.StepSizes`; None for a task with its own loop) under ``step_sizes``; an Adam or
        AdamW config is also re-trained with its bias correction off (:func:`tuner.measure.bias_correction.ablate`); on CUDA the
        peak memory of its first step is measured (:func:`tuner.measure.peak_memory.peak_step_bytes`)."""
        best = best_trial(self.study)
        if best is None:
            return None
        cached = self.study.user_attrs.get("final")
        if cached and cached["trial"] == best.number and cached["seeds"] == seeds:
            return cached
        config = config_from_dict(best.user_attrs["config"])
        runs, started, probes = [], [], []
        for seed in seeds:
            started.append(time.time())
            probes.append(step_sizes.probe(self.task, self.data, config))
            runs.append(train(self.task, self.data, config, seed=seed, test=True, step_hook=probes[-1]))
        final = {
            "trial": best.number,
            "seeds": seeds,
            "started": started,
            "status": [run.status for run in runs],
            "val_objective": [run.history[-1].objective(config.objective) for run in runs],
            "val_metric": [run.history[-1].val_metric for run in runs],
            "test_objective": [_test_objective(run, config.objective) for run in runs],
            "test_metric": [math.nan if run.test_metric is None else run.test_metric for run in runs],
            "history": [columns(run.history) for run in runs],
            "step_sizes": None if None in probes else [probe.result() for probe in probes],
            "bias_correction_off": bias_correction.ablate(self.task, self.data, config, seeds),
            "peak_step_bytes": peak_step_bytes(self.task, self.data, config),
        }
        self.study.set_user_attr("final", final)
        return final


class _OwnError(Exception):
    """An error of the study's own bookkeeping (storage, sampler) inside a population's callbacks: not the task's."""


def _own(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with its exceptions raised as :class:`_OwnError` (the original as its cause)."""

    def wrapped(*args: Any) -> Any:
        try:
            return function(*args)
        except Exception as err:
            raise _OwnError() from err

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


def _test_objective(run: RunResult, objective: str) -> float:
    value = run.test_loss if objective == "loss" else run.test_metric
    return math.nan if value is None else value
