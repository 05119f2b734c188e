"""An experiment from preparation to its studies, final evaluation, export and report: the path ``tuner study`` and
:func:`tuner.run_experiment` share.

Heavy libraries are imported inside the functions, so that ``python -m tuner --help`` stays instant.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner import __version__
from tuner.errors import UserError, mask_url
from tuner.plural import counted
from tuner.run.folders import check_writable_folder

if TYPE_CHECKING:
    import pandas

    from tuner.config.experiment import Config, Experiment
    from tuner.report.statistics import Summary
    from tuner.run.outputs import Outputs
    from tuner.run.progress import Progress
    from tuner.tracking.follower import Follower


@dataclass
class Options:
    """What ``tuner study`` takes, with its defaults (its flags, by the same names; see
    ``python -m tuner study --help``).

    ``experiment``: a file, a shipped name (None: quickstart), or an :class:`~tuner.config.experiment.Experiment` (from
    :func:`tuner.config.experiment.load_experiment`), used as it is: the overrides below
    (``trials`` ... ``population``) apply to files and names only.
    """

    experiment: str | Path | Experiment | None = None
    trials: int | None = None
    epochs: int | None = None
    optimizers: list[str] | None = None
    task: str | None = None
    seed: int | None = None
    final_seeds: int | None = None
    target: float | None = None
    population: int | None = None
    storage: str = "sqlite:///tuner.db"
    tracking_uri: str | None = None
    no_tracking: bool = False
    out: Path | None = None
    device: str = "auto"
    amp: str = "none"
    jobs: int = 1
    threads: int | None = None
    no_progress: bool = False


@dataclass(repr=False)
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

    def __repr__(self) -> str:
        best = ", ".join(f"{s.optimizer}: {s.best_value:.6g}" for s in self.summaries if s.best_value is not None)
        trials = counted(len(self.trials), "trial")
        return f"Result(winner={self.winner!r}, best values {{{best}}}, {trials}, out={str(self.out)!r})"


def configure_process(threads: int | None) -> None:
    """Make this process ready to train: glibc keeps the memory tensors free for reuse
    (:func:`tuner.train.trainer.keep_freed_memory`) and torch uses ``threads`` CPU threads (``torch.set_num_threads``;
    None leaves torch's own choice). The one place where ``tuner study``, ``tuner train``, each ``--jobs`` worker and
    :func:`run_experiment` set them up.
    """
    from tuner.train.trainer import keep_freed_memory

    keep_freed_memory()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def prepare(args: Options, device_spec: str) -> tuple[Any, Any, Any, Any]:
    """The experiment, task, setup and data of ``args``, validated, with the data on ``device_spec``.

    Every ``--jobs`` worker calls it too, for its own device.
    """
    from tuner.config import experiment as config
    from tuner.study.components import check_components
    from tuner.study.resume import Setup
    from tuner.tasks.check import load_data
    from tuner.tasks.loading import load_task
    from tuner.train.trainer import check_amp, resolve_device

    configure_process(args.threads)
    if isinstance(args.experiment, config.Experiment):
        experiment = args.experiment
    else:
        path = config.find_experiment(None if args.experiment is None else str(args.experiment))
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
            "population": args.population,
        }
        experiment = config.load_experiment(path, overrides)
    device = resolve_device(device_spec)
    check_amp(args.amp, device, "--amp")
    task = load_task(experiment.task, experiment.task_args, experiment.at("task"))
    setup = Setup.resolve(experiment, task, args.amp)
    check_components(experiment, setup)
    check_writable_folder(args.out or Path("runs") / experiment.name)
    with_args = f" with task_args {experiment.task_args}" if experiment.task_args else ""
    return experiment, task, setup, load_data(task, device, experiment.at("task") + with_args, experiment.num_workers)


def run_study(args: Options, quiet: bool = False) -> Result:
    """Run the experiment of ``args`` to its budgets, then its final evaluation, export and report
    (see :class:`Result`).

    ``quiet``: print only what went wrong (a failed trial, a lost worker, an incomplete MLflow mirror), not the
    experiment's line, the summary, the evidence, the files written nor the winner (default False: as ``tuner study``).
    Raises :class:`~tuner.errors.UserError` for bad input (nothing stored is lost) and KeyboardInterrupt on Ctrl-C
    (finished trials are kept).
    """
    import optuna

    from tuner.study.connection import storage_at
    from tuner.tracking.uri import check_reachable, tracking_uri

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    experiment, task, setup, data = prepare(args, args.device)
    out = args.out or Path("runs") / experiment.name
    tracking = None if args.no_tracking else tracking_uri(args.tracking_uri)
    if tracking:
        check_reachable(*tracking)
    with storage_at(args.storage) as storage:
        return _tune(args, quiet, storage, (experiment, task, setup, data), out, tracking)


def _tune(
    args: Options,
    quiet: bool,
    storage: Any,
    prepared: tuple[Any, Any, Any, Any],
    out: Path,
    tracking: tuple[str, str] | None,
) -> Result:
    """:func:`run_study` once the experiment is prepared and its storage open: the studies, the final evaluations, the
    outputs and the :class:`Result`."""
    import pandas

    from tuner.config import export
    from tuner.run.outputs import write_outputs
    from tuner.run.progress import Progress
    from tuner.run.workers import run_workers
    from tuner.study.resume import check_resumable, study_name
    from tuner.study.runner import StudyRunner, population_of
    from tuner.tracking.follower import Follower

    experiment, task, setup, data = prepared
    names = {space.name: study_name(experiment, space) for space in experiment.optimizers}
    for space in experiment.optimizers:
        check_resumable(storage, names[space.name], setup, space, experiment.schedules)
    seeds = [experiment.seed + i for i in range(1, experiment.final_seeds + 1)]
    device = data.device
    population, why = population_of(experiment, setup, task, data, share=1 / args.jobs)
    if why:
        print(why, file=sys.stderr)
    parts = [
        f"task {task.name}",
        f"{counted(experiment.trials, 'trial')} x {counted(len(experiment.optimizers), 'optimizer')}",
        counted(setup.epochs, "epoch"),
        f"device {device}" + ("" if args.amp == "none" else f", amp {args.amp}"),
        *([f"{args.jobs} workers"] if args.jobs > 1 else []),
        *([f"a population of {population} trials at once"] if population > 1 else []),
        f"storage {mask_url(args.storage)}",
        f"tracking {mask_url(tracking[0]) if tracking else 'off'}",
    ]
    if not quiet:
        print(f"experiment {experiment.name} ({experiment.source}): {', '.join(parts)}", file=sys.stderr)

    # MLflow is written by a follower process, off the training process's clock (see tuner.tracking.follower).
    follower = (
        Follower(tracking[0], args.storage, experiment.name, list(names.values()), __version__) if tracking else None
    )
    try:
        if args.jobs > 1:
            bars = {
                names[s.name]: Progress(
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
                    f"workers ended early: {', '.join(lost)}; their finished trials are stored, this process trains "
                    "what is left",
                    file=sys.stderr,
                )
        studies = {}
        for space in experiment.optimizers:
            # With --jobs the workers met the budget; this tops up what a lost worker left.
            runner = StudyRunner(experiment, space, setup, task, data, storage)
            with Progress(space.name, runner.study, experiment.trials, setup.direction, args.no_progress) as progress:
                try:
                    runner.run_batched(experiment.trials, population, _on_trial(runner.name, progress, follower))
                except UserError:  # every trial failed the same way: the parent run says so
                    if follower:
                        follower.end(runner.name, "FAILED")
                    raise
            runner.final_evaluation(seeds)  # stored in the study, for the outputs below
            # The file it last ran from, for the best configs that tuner plot --experiment NAME writes.
            if runner.study.user_attrs.get("experiment_file") != experiment.source:
                runner.study.set_user_attr("experiment_file", experiment.source)
            if follower:
                follower.final(runner.name)
            studies[space.name] = runner.study

        source = {
            "experiment": experiment.name,
            "experiment_file": experiment.source,
            "storage": mask_url(args.storage),
            "tuner_version": __version__,
        }
        if tracking:
            source["tracking_uri"] = mask_url(tracking[0])
        # The result is printed before the figures are drawn, and the figures while the follower catches up; then the
        # best configs get their run ids. A folder already made from the same trials is left as it is.
        run_ids = (lambda: {study: follower.runs(study) for study in names.values()}) if follower else None
        done = write_outputs(
            storage,
            experiment.name,
            out,
            target=experiment.target,
            source=source,
            run_ids=run_ids,
            only_if_changed=True,
            before_figures=None if quiet else lambda written: _print_result(written, setup.label, seeds),
        )
        if not quiet:
            _print_files(done, out, experiment.name)
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
            _report_tracking(follower, experiment.name, args, quiet)
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


def _print_result(done: Outputs, label: str, seeds: list[int]) -> None:
    """The summary, the evidence and the winner, as ``tuner study`` prints them before its figures are drawn."""
    print(done.summary)
    print("\n" + done.evidence)
    if done.best is not None:
        print(f"\nwinner: {done.report.winner} (final-seed validation {label} mean over seeds {seeds})")


def _print_files(done: Outputs, out: Path, experiment: str) -> None:
    """The files written (or left as they were), as ``tuner study`` prints them at its end."""
    written = ["best.yaml"] * (done.best is not None) + [p.name for p in done.configs.values()]
    print(
        f"\noutputs in {out}/ (every study of experiment {experiment!r}"
        f"{'' if done.redrawn else '; up to date, left as they were'}): "
        f"{', '.join(written) or 'none (no trial completed)'}; "
        f"report: {', '.join(str(p.relative_to(out)) for p in done.report_files)}" + done.removed_note()
    )


def _on_trial(study: str, progress: Progress, follower: Follower | None) -> Callable[[Any, int], None]:
    """After each stored trial: the progress bar, then the MLflow follower (if tracking)."""

    def on_trial(trial: Any, trial_id: int) -> None:
        progress(trial)
        if follower:
            follower.trial(study, trial_id)

    return on_trial


def sync_command(args: Options, uri: str) -> str:
    """The ``tuner sync`` command that completes this study command's MLflow mirror, quoted for a POSIX shell
    (paths with spaces paste as they are; a password stays masked). An experiment given as an object is named
    by ``--experiment``."""
    experiment = args.experiment
    if experiment is None or isinstance(experiment, (str, Path)):
        which = [str(experiment or "quickstart")]
    else:
        which = ["--experiment", experiment.name]
    return shlex.join(
        ["python", "-m", "tuner", "sync", *which, "--storage", mask_url(args.storage), "--tracking-uri", mask_url(uri)]
    )


def _report_tracking(follower: Follower, experiment: str, args: Options, quiet: bool) -> None:
    """Wait for the follower's last sync and say where the runs are (unless ``quiet``), or what is missing and how to
    fill it."""
    report, uri = follower.close(), follower.uri
    if report.get("error"):
        print(
            f"tracking: the MLflow mirror is incomplete ({report['error']}); every trial is in the Optuna storage: "
            f"run `{sync_command(args, uri)}` to complete it",
            file=sys.stderr,
        )
    elif not quiet:
        browse = (
            f" (browse: {shlex.join(['mlflow', 'ui', '--backend-store-uri', uri])})" if uri.startswith("sqlite") else ""
        )
        print(
            f"tracking: {counted(report['runs'], 'run')} in MLflow experiment {experiment!r} at "
            f"{mask_url(uri)}{browse}",
            file=sys.stderr,
        )


def run_experiment(experiment: str | Path | Experiment | None = None, quiet: bool = False, **options: Any) -> Result:
    """Run an experiment as ``tuner study`` does and return its :class:`Result`.

    ``experiment``: a YAML file, a shipped name (default: quickstart) or an
    :class:`~tuner.config.experiment.Experiment`;
    ``quiet``: print nothing but what went wrong (default False: the summary and evidence, as ``tuner study``);
    ``options``: the fields of :class:`Options` (``trials=10, storage="sqlite:///tuner.db", no_tracking=True``...).
    Raises :class:`~tuner.errors.UserError` (one line naming the field, the value and what is allowed) for bad input,
    TypeError for an option that does not exist.
    """
    if options.get("out") is not None:  # a str, as a notebook gives it, is a folder too
        options["out"] = Path(options["out"])
    return run_study(Options(experiment=experiment, **options), quiet)
