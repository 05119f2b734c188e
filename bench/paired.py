"""tuner / bare measured in one run: each training the tuner does is followed at once by the same training in the
bare loop, timed apart.

On a shared machine the speed drifts over a run (on the 2-core VM of 2026-12-01 the same 100-epoch training took
1.1-2.0 s from one run to the next, and a whole side 15-20% more or less than a minute before), so sides timed one
after the other measure the drift as much as the tuner. Paired, both sides train within a second of each other,
thousands of times over: the tuner's time is the run's wall time less the bare trainings inside it; the bare loop's
is those trainings plus its data loading.
"""

from __future__ import annotations

import collections
import importlib
import time
from collections.abc import Callable
from typing import Any

from tuner.config.experiment import Config
from tuner.tasks.loading import load_task
from tuner.tasks.task import Data, Task

# Where the tuner calls its trainer (module: attribute), and the kind of run each one trains.
CALLERS = {
    "tuner.study.runner": "trial",
    "tuner.study.final": "final",
    "tuner.measure.bias_correction": "ablation",
}

# bare(task, data, config, seed, epochs, kind): the bare loop's training of one run.
Bare = Callable[[Task, Data, Config, int, int, str], object]


class Paired:
    """Inside a ``with`` block, every ``train`` call of :data:`CALLERS` is followed by ``bare`` on the same config,
    seed and epochs, in the bare loop's own copy of the task's data: ``trainer`` and ``bare_loop`` add up the two
    sides' trainings by kind of run, ``load_seconds`` is the bare loop's data loading."""

    def __init__(self, bare: Bare) -> None:
        self.bare = bare
        self.load_seconds = 0.0
        self.runs = 0
        # By kind of run (CALLERS' values): the seconds of the tuner's trainer, and of the bare loop right after it.
        self.trainer: collections.Counter[str] = collections.Counter()
        self.bare_loop: collections.Counter[str] = collections.Counter()
        self._data: tuple[Task, Data] | None = None
        self._patched: list[tuple[Any, Callable[..., Any]]] = []

    def _followed(self, kind: str, train: Callable[..., Any]) -> Callable[..., Any]:
        def paired(task: Task, data: Data, config: Config, *args: Any, seed: int | None = None, **kw: Any) -> Any:
            started = time.perf_counter()
            result = train(task, data, config, *args, seed=seed, **kw)
            self.trainer[kind] += time.perf_counter() - started
            started = time.perf_counter()
            if self._data is None:  # the bare loop loads the task's data once, as its side does
                own = load_task(config.task, config.task_args)
                self._data = own, own.data().to(data.device)
                self.load_seconds = time.perf_counter() - started
                started = time.perf_counter()
            self.bare(*self._data, config, config.seed if seed is None else seed, len(result.history), kind)
            self.bare_loop[kind] += time.perf_counter() - started
            self.runs += 1
            return result

        return paired

    def __enter__(self) -> Paired:
        for name, kind in CALLERS.items():
            module = importlib.import_module(name)
            self._patched.append((module, module.train))
            module.train = self._followed(kind, module.train)
        return self

    def __exit__(self, *exc: object) -> None:
        for module, train in reversed(self._patched):
            module.train = train
        self._patched = []

    @property
    def bare_seconds(self) -> float:
        """The bare loop's trainings, all kinds of run."""
        return sum(self.bare_loop.values())

    def ratio(self, wall: float) -> tuple[float, float, float]:
        """The tuner's seconds, the bare loop's and their ratio, for a run of ``wall`` seconds timed around the block."""
        tuner = wall - self.bare_seconds - self.load_seconds
        bare = self.bare_seconds + self.load_seconds
        return tuner, bare, tuner / bare
