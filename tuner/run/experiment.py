"""An experiment from preparation to its studies, final evaluation, export and report: the path ``tuner study`` and
:func:`tuner.run_experiment` share.

Heavy libraries are imported inside the functions, so that ``python -m tuner --help`` stays instant.
"""

from __future__ import annotations

import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner import __version__
from tuner.errors import UserError, mask_url

if TYPE_CHECKING:
    import pandas

    from tuner.config.experiment import Config, Experiment
    from tuner.report.statistics import Summary


@dataclass
class Options:
    """What ``tuner study`` takes, with its defaults (its flags, by the same names; see ``python -m tuner study --help``).

    ``experiment``: a file, a shipped name (None: quickstart), or an :class:`~tuner.config.experiment.Experiment` (from
    :func:`tuner.config.experiment.load_experiment`), used as it is: the overrides below (``trials`` ... ``batch_trials``)
    apply to files and names only.
    """

    experiment: str | Path | Experiment | None = None
    trials: int | None = None
    epochs: int | None = None
    optimizers: list[str] | None = None
    task: str | None = None
    seed: int | None = None
    final_seeds: int | None = None
    target: float | None = None
    batch_trials: int | None = None
    storage: str = "sqlite:///tuner.db"
    tracking_uri: str | None = None
    no_tracking: bool = False
    out: Path | None = None
    device: str = "auto"
    amp: str = "none"
    jobs: int = 1
    threads: int | None = None
    no_progress: bool = False


@dataclass
class Result:
    """What an experiment gave: each optimizer's best config (as exported to ``best-<optimizer>.yaml``: its
    ``build(params, steps_per_epoch=...)`` gives the torch optimizer and scheduler), the winner
    (None: no trial completed), each study's summary, and every trial as a DataFrame (Optuna's ``trials_dataframe``
    columns, one row a trial, with the column ``optimizer``)."""

    best: dict[str, Config]
    winner: str | None
    summaries: list[Summary]
    trials: pandas.DataFrame
    out: Path
    files: list[Path] = field(default_factory=list)


def prepare(args: Options, device_spec: str) -> tuple[Any, Any, Any, Any]:
    """The experiment, task, setup and data of ``args``, validated, with the data on ``device_spec``.

    Every ``--jobs`` worker calls it too, for its own device.
    """
    from tuner.config import experiment as config
    from tuner.study.components import check_components
    from tuner.study.resume import Setup
    from tuner.tasks import load_data, load_task
    from tuner.train.trainer import check_amp, keep_freed_memory, resolve_device

    keep_freed_memory()
    if args.threads:  # without it, --jobs workers split the cores (tuner.run.workers)
        import torch

        torch.set_num_threads(args.threads)
    if isinstance(args.experiment, config.Experiment):
        experiment = args.experiment
    else:
        path = config.find_experiment(args.experiment and str(args.experiment))
        # Paths given on the command line are relative to the working directory.
        refs = args.optimizers and [
            str(Path(r).resolve()) if r.endswith((".yaml", ".yml")) else r for r in args.optimizers
        ]
        overrides = {
            "trials": args.trials,
            "epochs": args.epochs,
            "optimizers": refs,
            "task": args.task,
            "seed": args.seed,
            "final_seeds": args.final_seeds,
            "target": args.target,
            "batch_trials": args.batch_trials,
        }
        experiment = config.load_experiment(path, overrides)
    device = resolve_device(device_spec)
    check_amp(args.amp, device, "--amp")
    task = load_task(experiment.task, experiment.task_args, experiment.at("task"))
    setup = Setup.resolve(experiment, task, args.amp)
    check_components(experiment, setup)
    check_writable_folder(args.out or Path("runs") / experiment.name)
    with_args = f" with task_args {experiment.task_args}" if experiment.task_args else ""
    return experiment, task, setup, load_data(task, device, experiment.at("task") + with_args)


def run_study(args: Options) -> Result:
    """Run the experiment of ``args`` to its budgets, then its final evaluation, export and report (see :class:`Result`).

    Raises :class:`~tuner.errors.UserError` for bad input (nothing stored is lost) and KeyboardInterrupt on Ctrl-C
    (finished trials are kept).
    """
    import optuna
    import pandas

    from tuner.config import export
    from tuner.run.outputs import write_outputs
    from tuner.run.workers import run_workers
    from tuner.study.connection import open_storage
    from tuner.study.resume import check_resumable, study_name
    from tuner.study.runner import StudyRunner, population
    from tuner.tracking.mirror import Follower, check_reachable, tracking_uri

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    experiment, task, setup, data = prepare(args, args.device)
    out = args.out or Path("runs") / experiment.name
    tracking = None if args.no_tracking else tracking_uri(args.tracking_uri)
    if tracking:
        check_reachable(*tracking)
    storage = open_storage(args.storage)
    names = {space.name: study_name(experiment, space) for space in experiment.optimizers}
    for space in experiment.optimizers:
        check_resumable(storage, names[space.name], setup, space, experiment.schedules)
    seeds = [experiment.seed + i for i in range(1, experiment.final_seeds + 1)]
    device = data.device
    size, why = population(experiment, setup, task, data, share=1 / args.jobs)
    if why:
        print(why, file=sys.stderr)
    print(
        f"experiment {experiment.name} ({experiment.source}): task {task.name}, {experiment.trials} trials x {len(experiment.optimizers)} optimizers, "
        f"{setup.epochs} epochs, device {device}{'' if args.amp == 'none' else ', amp ' + args.amp}, "
        f"{'' if args.jobs == 1 else f'{args.jobs} workers, '}{'' if size == 1 else f'a population of {size} trials at once, '}storage {mask_url(args.storage)}, "
        f"tracking {mask_url(tracking[0]) if tracking else 'off'}",
        file=sys.stderr,
    )

    # MLflow is written by a follower process, off the training process's clock (see tuner.tracking.mirror).
    follower = tracking and Follower(tracking[0], args.storage, experiment.name, list(names.values()), __version__)
    try:
        if args.jobs > 1:
            bars = {
                names[s.name]: _progress(
                    s.name,
                    StudyRunner(experiment, s, setup, task, data, storage).study,
                    experiment.trials,
                    setup.direction,
                    args.no_progress,
                    position=i,
                )
                for i, s in enumerate(experiment.optimizers)
            }

            handlers = {name: _on_trial(name, bar, follower) for name, bar in bars.items()}

            def on_worker_trial(study: str, trial_id: int) -> None:
                handlers[study](storage.get_trial(trial_id), trial_id)

            try:
                lost = run_workers(args.jobs, prepare, args, device, on_worker_trial)
            finally:
                for bar in bars.values():
                    bar.close()
            if lost:
                print(
                    f"workers ended early: {', '.join(lost)}; their finished trials are stored, this process trains what is left",
                    file=sys.stderr,
                )
        studies = {}
        for space in experiment.optimizers:
            # With --jobs the workers met the budget; this tops up what a lost worker left.
            runner = StudyRunner(experiment, space, setup, task, data, storage)
            with _progress(space.name, runner.study, experiment.trials, setup.direction, args.no_progress) as progress:
                try:
                    runner.run_batched(experiment.trials, size, _on_trial(runner.name, progress, follower))
                except UserError:  # every trial failed the same way: the parent run says so
                    if follower:
                        follower.end(runner.name, "FAILED")
                    raise
            runner.final_evaluation(seeds)  # stored in the study, for the outputs below
            studies[space.name] = runner.study

        source = {
            "experiment": experiment.name,
            "experiment_file": experiment.source,
            "storage": mask_url(args.storage),
            "tuner_version": __version__,
        }
        if tracking:
            source["tracking_uri"] = mask_url(tracking[0])
        run_ids = {study: follower.runs(study) for study in names.values()} if follower else {}
        done = write_outputs(storage, experiment.name, out, target=experiment.target, source=source, run_ids=run_ids)
        print(done.summary)
        print("\n" + done.evidence)
        written = ["best.yaml"] * (done.best is not None) + [p.name for p in done.configs.values()]
        print(
            f"\noutputs in {out}/ (every study of experiment {experiment.name!r}): {', '.join(written) or 'none (no trial completed)'}; "
            f"report: {', '.join(str(p.relative_to(out)) for p in done.report_files)}"
        )
        if done.best is not None:
            print(f"winner: {done.report.winner} (final-seed validation {setup.label} mean over seeds {seeds})")
        if follower:
            for name, study in names.items():
                follower.attach(
                    study,
                    [
                        *done.report_files,
                        *([done.configs[name]] if name in done.configs else []),
                        *([done.best] if done.best else []),
                    ],
                    out,
                )
                follower.end(study, "FINISHED")
    finally:
        if follower:
            _report_tracking(follower, experiment.name, tracking[0], args)
    trials = pandas.concat(
        [study.trials_dataframe().assign(optimizer=name) for name, study in studies.items()], ignore_index=True
    )
    return Result(
        best={name: export.load_config(path) for name, path in done.configs.items()},
        winner=done.report.winner,
        summaries=[o.summary for o in done.report.optimizers],
        trials=trials,
        out=out,
        files=[*done.report_files, *done.configs.values(), *([done.best] if done.best else [])],
    )


def _on_trial(study: str, progress: _progress, follower: Any) -> Any:
    """After each stored trial: the progress bar, then the MLflow follower (if tracking)."""

    def on_trial(trial: Any, trial_id: int) -> None:
        progress(trial)
        if follower:
            follower.trial(study, trial_id)

    return on_trial


def sync_command(args: Options, uri: str) -> str:
    """The ``tuner sync`` command that completes this study command's MLflow mirror, quoted for a POSIX shell
    (paths with spaces paste as they are; a password stays masked). An experiment given as an object is named by ``--experiment``."""
    named = args.experiment is None or isinstance(args.experiment, (str, Path))
    which = [str(args.experiment or "quickstart")] if named else ["--experiment", args.experiment.name]
    return shlex.join(
        ["python", "-m", "tuner", "sync", *which, "--storage", mask_url(args.storage), "--tracking-uri", mask_url(uri)]
    )


def _report_tracking(follower: Any, experiment: str, uri: str, args: Options) -> None:
    """Wait for the follower's last sync and say where the runs are, or what is missing and how to fill it."""
    report = follower.close()
    if report.get("error"):
        print(
            f"tracking: the MLflow mirror is incomplete ({report['error']}); every trial is in the Optuna storage: "
            f"run `{sync_command(args, uri)}` to complete it",
            file=sys.stderr,
        )
    else:
        browse = (
            f" (browse: {shlex.join(['mlflow', 'ui', '--backend-store-uri', uri])})" if uri.startswith("sqlite") else ""
        )
        print(
            f"tracking: {report['runs']} runs in MLflow experiment {experiment!r} at {mask_url(uri)}{browse}",
            file=sys.stderr,
        )


def check_writable_folder(path: Path) -> None:
    """``path`` is a folder, or can be made one, that we can write to; creates nothing."""
    import os

    # Room for the longest file written inside (a file name of up to 255 bytes) under the system's path limit.
    limit = os.pathconf("/", "PC_PATH_MAX") - 256 if hasattr(os, "pathconf") else math.inf
    if any(len(os.fsencode(part)) > 255 for part in path.parts) or len(os.fsencode(path.absolute())) > limit:
        shown = str(path) if len(str(path)) <= 60 else str(path)[:60] + "..."
        raise UserError(
            f"--out: {shown!r} is too long (allowed: folder names of at most 255 bytes, the whole path at most {limit} bytes)"
        )
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(
            f"--out: {str(path)!r} cannot be a folder here: {str(existing)!r} is not a writable folder (allowed: a folder, created if missing)"
        )


class _progress:
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

    def __enter__(self) -> _progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.bar.close()

    def _show_best(self) -> None:
        if self.best is not None:
            self.bar.set_postfix_str(f"best {self.best.value:.4g} (#{self.best.number})", refresh=False)

    def __call__(self, trial: Any) -> None:
        from optuna.trial import TrialState

        from tuner.study.outcomes import outcome

        if outcome(trial) == "failed":
            self.bar.write(f"{self.name} trial {trial.number} failed: {trial.user_attrs.get('reason')}")
        if trial.state == TrialState.COMPLETE and (
            self.best is None or self.sign * trial.value < self.sign * self.best.value
        ):
            self.best = trial
            self._show_best()
        self.bar.update(1)


def run_experiment(experiment: str | Path | Experiment | None = None, **options: Any) -> Result:
    """Run an experiment as ``tuner study`` does and return its :class:`Result`.

    ``experiment``: a YAML file, a shipped name (default: quickstart) or an :class:`~tuner.config.experiment.Experiment`;
    ``options``: the fields of :class:`Options` (``trials=10, storage="sqlite:///tuner.db", no_tracking=True``...).
    Raises :class:`~tuner.errors.UserError` (one line naming the field, the value and what is allowed) for bad input,
    TypeError for an option that does not exist.
    """
    return run_study(Options(experiment=experiment, **options))
