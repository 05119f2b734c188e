"""The report's figures: each one's name and what it shows; :func:`drawing` and :func:`draw_all` draw and save
them as PNG.

The figures are independent of each other, and drawing them is most of a report's time, on one core while the
others are idle (training is over): on Linux with two cores or more, a child forked as the report starts draws
:data:`FORKED` while this process writes the rest of the report and draws the other figures (the child only
computes from the report in memory, draws and writes its PNGs: no storage, no torch). Where the child fails, its
figures are drawn here again, so an error reaches the caller as without it. The parameter importances, which only
``importance.png`` shows, can be left for the process that draws it to compute (``complete``).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tuner.report.data import Report

DPI = 100
# zlib's fastest level: the PNGs come out about 8% larger and take 30% less time to encode (sensitivity.png: 32 ms
# instead of 45, of the figure's 0.3 s).
PNG = {"compress_level": 1}

# Each figure's name (plots/<name>.png) and what it shows, in the order summary.md lists them.
FIGURES: dict[str, str] = {
    "importance": "which hyperparameters mattered, per optimizer",
    "convergence": "tuning convergence: best-so-far objective against trials, every trial by outcome",
    "learning_curves": "training convergence: validation curves of each best config, mean ± sd over the final seeds",
    "budget": "expected best objective against the number of trials: which optimizer is easier to tune",
    "sensitivity": "objective against learning rate for every trial; learning rate × epsilon where there is one",
    "step_sizes": "effective per-parameter learning rate over training, per optimizer",
}

# The figures the forked child draws, with the importances. In `tuner study`'s one report of a process the child
# first imports optuna.importance (about 1 s: it imports scikit-learn) and matplotlib (0.5 s), computes the
# importances' bootstrap (0.45 s of CPU time on the quickstart) and draws importance.png (0.25 s), while this process
# writes the texts, prints the result, imports matplotlib and draws the other five (1.1-1.4 s).
FORKED = ("importance",)


def draw_all(report: Report, folder: Path, complete: Callable[[], Report] | None = None) -> list[Path]:
    """Every figure of :data:`FIGURES` as ``folder/<name>.png``, in that order (:func:`drawing` with nothing
    beside it); the paths written."""
    with drawing(report, folder, complete):
        pass
    return [folder / f"{name}.png" for name in FIGURES]


@contextlib.contextmanager
def drawing(report: Report, folder: Path, complete: Callable[[], Report] | None = None) -> Iterator[None]:
    """Draw every figure of :data:`FIGURES` as ``folder/<name>.png`` (an existing folder): :data:`FORKED` by a child
    process forked on entering, where there are cores for two (see the module's docstring), the rest here when the
    block has run without an error. The block runs beside the child: ``tuner study`` writes its texts and prints its
    result there. The child is always waited for; the figures it did not draw are drawn here. ``complete()``:
    ``report`` with its parameter importances, where ``report`` has them pending
    (:func:`tuner.report.build.with_importances`), called by the process that draws ``importance.png``. Raises
    ``OSError`` when ``folder`` cannot be written."""

    def forked_figures() -> None:
        save_figures(complete() if complete is not None else report, folder, FORKED)

    # Forked before matplotlib is imported (where it is not yet): the block, which prints the result, does not wait
    # for that import; each process pays it, side by side.
    child = _forked(forked_figures) if _cores() > 1 else None
    try:
        yield
        save_figures(report, folder, [name for name in FIGURES if name not in FORKED])
    finally:  # the child is waited for even when the block or this process's figures fail
        drawn = child is not None and _succeeded(child)
    if not drawn:
        forked_figures()


def save_figures(report: Report, folder: Path, names: Iterable[str]) -> None:
    """Draw the figures ``names`` (of :data:`FIGURES`) here, as ``folder/<name>.png``. Raises ``OSError`` when
    ``folder`` cannot be written."""
    import matplotlib

    draw = _drawers()
    # Axes titles at a fixed height: no axis has ticks on top, and placing them automatically measures every axis's
    # ticks once more before drawing.
    with matplotlib.rc_context({"axes.titley": 1.0}):
        for name in names:
            draw[name](report).savefig(folder / f"{name}.png", dpi=DPI, pil_kwargs=PNG)


def _drawers() -> dict[str, Callable[[Report], Figure]]:
    """Each figure's drawing function by name."""
    # matplotlib and the drawing modules are imported here, when the report is drawn, not when `tuner study` starts
    # (about half a second): the first trial does not wait for them.
    from tuner.report.budget_plot import draw_budget
    from tuner.report.convergence_plot import draw_convergence
    from tuner.report.importance_plot import draw_importance
    from tuner.report.learning_curves_plot import draw_learning_curves
    from tuner.report.sensitivity_plot import draw_sensitivity
    from tuner.report.step_size_plot import draw_step_sizes

    return {
        "importance": draw_importance,
        "convergence": draw_convergence,
        "learning_curves": draw_learning_curves,
        "budget": draw_budget,
        "sensitivity": draw_sensitivity,
        "step_sizes": draw_step_sizes,
    }


def _cores() -> int:
    """The cores this process may run on where a child can be forked safely (Linux), else 1."""
    return len(os.sched_getaffinity(0)) if sys.platform == "linux" else 1


def _forked(work: Callable[[], None]) -> int:
    """The id of a child process forked to run ``work()``: it exits 0 when ``work`` returned, 1 when it raised, without
    running the parent's exit handlers or flushing its buffers."""
    # The objects of now out of the garbage collector's reach in the child: collecting them would write to each,
    # copying the parent's pages one by one (a quarter of the child's page faults are left).
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    gc.unfreeze()
    return pid


def _succeeded(pid: int) -> bool:
    """Wait for the child ``pid``; whether it exited 0."""
    return os.waitpid(pid, 0)[1] == 0
