"""What each command does with its parsed arguments: ``study``, ``sync``, ``plot``, ``evidence``, ``train``,
``tasks``. Heavy libraries are imported inside each, so that ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner import __version__
from tuner.errors import UserError, mask_url, url_failure
from tuner.plural import counted

if TYPE_CHECKING:
    import optuna

    from tuner.report.combined_evidence import Stored


def run_study(args: argparse.Namespace) -> int:
    """``tuner study``: :func:`tuner.run.experiment.run_study` with the flags as its options; exit code 0."""
    import dataclasses

    from tuner.run import experiment as run

    run.run_study(run.Options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(run.Options)}))
    return 0


def run_sync(args: argparse.Namespace) -> int:
    """``tuner sync``: make the MLflow experiment mirror every study of the experiment in the storage.

    Raises :class:`~tuner.errors.UserError` for a store that cannot be reached or refuses a write, and for an
    experiment with no study in the storage; exit code 0.
    """
    import optuna

    from tuner.study.connection import storage_at
    from tuner.study.resume import experiment_names
    from tuner.tracking.mirror import Mirror, SyncCount
    from tuner.tracking.uri import check_reachable, tracking_uri

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = _select_experiment(args)[0]
    uri, where = tracking_uri(args.tracking_uri)
    check_reachable(uri, where)
    with storage_at(args.storage, must_exist=True, read_only=True) as storage:
        studies = [s for s in optuna.get_all_study_names(storage) if s.startswith(f"{name}/")]
        if not studies:
            present = ", ".join(experiment_names(storage)) or "none"
            raise UserError(
                f"--storage: {mask_url(args.storage)!r} has no study of experiment {name!r} "
                f"(experiments there: {present})"
            )
        from mlflow.exceptions import MlflowException

        mirror = Mirror(uri, name, storage, args.storage, __version__)
        total = SyncCount()
        for study in studies:
            try:
                count = mirror.sync(study)
                mirror.settle(study)
            # Never a traceback: the store's refusal, in one line (no run is left RUNNING).
            except MlflowException as err:
                raise UserError(
                    f"--tracking-uri {mask_url(uri)!r}: MLflow refused a write while syncing {study!r}: "
                    f"{url_failure(err, uri)}; the Optuna storage is unchanged"
                ) from None
            total += count
            print(
                f"{study}: {counted(count.written, 'run')} written, {count.kept} already there, "
                f"{count.deleted} deleted (cut short or stale)"
            )
        print(
            f"MLflow experiment {name!r} at {mask_url(uri)} mirrors {counted(len(studies), 'study', 'studies')}: "
            f"{counted(total.written + total.kept, 'run')}"
        )
    return 0


def _select_experiment(args: argparse.Namespace) -> tuple[str, float | None, str, str | None]:
    """``plot`` and ``sync``: the experiment's name, target, where they came from (every study of that name is used),
    and its file (None for ``--experiment NAME``)."""
    from tuner.config import experiment as config

    if args.experiment and args.name:
        raise UserError(f"--experiment {args.name!r} and the experiment file {args.experiment!r}: give one, not both")
    if args.name:
        return args.name, getattr(args, "target", None), "--experiment", None
    experiment = config.load_experiment(
        config.find_experiment(args.experiment), {"target": getattr(args, "target", None)}
    )
    return experiment.name, experiment.target, experiment.at("name"), experiment.source


def run_plot(args: argparse.Namespace) -> int:
    """``tuner plot``: rewrite the output folder from the storage (trains nothing); exit code 0."""
    import optuna

    from tuner.run.folders import check_writable_folder
    from tuner.run.outputs import write_outputs
    from tuner.study.connection import storage_at

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name, target, where, experiment_file = _select_experiment(args)
    out = args.out or Path("runs") / name
    check_writable_folder(out)
    with storage_at(args.storage, must_exist=True, read_only=True) as storage:
        source, runs = _stored_source(args, name, experiment_file, storage)
        done = write_outputs(
            storage,
            name,
            out,
            target=target,
            importance=args.importance,
            source=source,
            run_ids=(lambda: runs) if runs else None,
            where=where,
        )
    print(done.summary)
    print("\n" + done.evidence)
    files = (
        ["best.yaml"] * (done.best is not None)
        + [p.name for p in done.configs.values()]
        + [str(p.relative_to(out)) for p in done.report_files]
    )
    print(f"\noutputs in {out}/ (every study of experiment {name!r}): {', '.join(files)}{done.removed_note()}")
    return 0


def _stored_source(
    args: argparse.Namespace, name: str, experiment_file: str | None, storage: optuna.storages.BaseStorage
) -> tuple[dict[str, Any], dict[str, dict[int, str]]]:
    """``plot``: the ``source`` of the best configs as ``tuner study`` writes it, and the MLflow run ids of the
    experiment's trials (study -> trial number -> run id) at ``--tracking-uri``. The experiment file is the one given,
    else the one the study last ran from (stored with it); ``tracking_uri`` only where the runs are found there."""
    from urllib.parse import urlsplit

    from tuner.tracking.lookup import mirrored_runs
    from tuner.tracking.uri import check_reachable, tracking_uri

    experiment_file = experiment_file or next(
        (
            s.user_attrs["experiment_file"]
            for s in storage.get_all_studies()
            if s.study_name.startswith(f"{name}/") and "experiment_file" in s.user_attrs
        ),
        None,
    )
    source = {"experiment": name} | ({"experiment_file": experiment_file} if experiment_file else {})
    source |= {"storage": mask_url(args.storage), "tuner_version": __version__}
    if args.no_tracking:
        return source, {}
    uri, where = tracking_uri(args.tracking_uri)
    if urlsplit(uri).scheme.split("+")[0] != "sqlite":  # an SQLite file is only read, so in any folder
        check_reachable(uri, where)
    runs = mirrored_runs(uri, where, name, storage)
    return source | ({"tracking_uri": mask_url(uri)} if runs else {}), runs


def run_evidence(args: argparse.Namespace) -> int:
    """``tuner evidence``: one evidence.md over the stored studies of the experiments (files, shipped names, or
    ``--experiment`` names in the storage), training nothing; exit code 0."""
    import optuna

    from tuner.report.combined_evidence import write_combined_evidence
    from tuner.run.folders import check_writable_folder
    from tuner.study.connection import storage_at

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_writable_folder(args.out)
    stored = _select_experiments(args)
    with storage_at(args.storage, must_exist=True, read_only=True) as storage:
        path = write_combined_evidence(storage, stored, args.out)
    print(path.read_text(), end="")
    print(f"\noutputs in {args.out}/ (experiments {', '.join(s.name for s in stored)}): evidence.md")
    return 0


def _select_experiments(args: argparse.Namespace) -> list[Stored]:
    """``evidence``: the experiments, each once, from their files or shipped names, or by ``--experiment`` names."""
    from tuner.config import experiment as config
    from tuner.report.combined_evidence import Stored

    if args.experiments and args.names:
        raise UserError(
            f"--experiment {' '.join(args.names)!r} and the experiment files {' '.join(args.experiments)!r}: "
            "give one, not both"
        )
    if args.names:
        refs, stored = args.names, [Stored(name, None, "--experiment") for name in args.names]
    elif args.experiments:
        refs = args.experiments
        experiments = [config.load_experiment(config.find_experiment(r)) for r in refs]
        stored = [Stored(e.name, e.target, e.at("name")) for e in experiments]
    else:
        raise UserError(
            "experiment: missing (allowed: experiment YAML files or shipped names, or --experiment NAME ...)"
        )
    names = [s.name for s in stored]
    for ref, s in zip(refs, stored):
        if names.count(s.name) > 1:
            raise UserError(f"experiment {ref!r}: name: {s.name!r} is given twice (allowed: each experiment once)")
    return stored


def run_train(args: argparse.Namespace) -> int:
    """``tuner train``: re-train an exported best config on ``--seeds`` seeds and print each seed's validation and test
    objective (and metric), then their mean ± sd, as ``tuner study``'s final evaluation reports them.

    Raises :class:`~tuner.errors.UserError` for a bad config file or seed range; exit code 0.
    """
    import dataclasses
    import math

    from tuner.config.experiment import MAX_SEED
    from tuner.config.export import load_config
    from tuner.report.statistics import mean_sd, pm
    from tuner.run.experiment import configure_process
    from tuner.study.final import test_objective
    from tuner.tasks.check import load_data
    from tuner.tasks.loading import load_task
    from tuner.train.results import objective_label
    from tuner.train.trainer import check_amp, resolve_device, train

    configure_process(args.threads)
    cfg = load_config(args.config)
    first = cfg.seed if args.first_seed is None else args.first_seed
    if first + args.seeds - 1 > MAX_SEED:
        raise UserError(
            f"--first-seed {first} with --seeds {args.seeds}: seeds up to {first + args.seeds - 1} are not allowed "
            f"(at most {MAX_SEED})"
        )
    device = resolve_device(args.device)
    if args.amp is not None:
        cfg = dataclasses.replace(cfg, amp=args.amp)
    check_amp(cfg.amp, device, "--amp" if args.amp else f"{args.config}: training.amp")
    task = load_task(cfg.task, cfg.task_args, f"{args.config}: training.task")
    data = load_data(task, device, f"{args.config}: training.task")
    label = objective_label(cfg.objective, task.metric)
    if args.first_seed is None:
        print(
            f"seeds from {first}, the config's own: seed {first} reproduces the trial it was selected on (optimistic); "
            f"--first-seed {first + 1} for fresh seeds",
            file=sys.stderr,
        )
    runs: list[dict[str, float]] = []
    for seed in range(first, first + args.seeds):
        result = train(task, data, cfg, seed=seed, test=True)
        last = result.history[-1]
        # As tuner study's final evaluation stores them: the objective, then the task's metric if it is another.
        runs.append(
            {f"val {label}": last.objective(cfg.objective), f"test {label}": test_objective(result, cfg.objective)}
        )
        if task.metric != label:
            test_metric = math.nan if result.test_metric is None else result.test_metric
            runs[-1] |= {f"val {task.metric}": last.val_metric, f"test {task.metric}": test_metric}
        shown = ", ".join(f"{name} {value:.6g}" for name, value in runs[-1].items())
        print(f"seed {seed}: {shown}" + (f" ({result.reason})" if result.reason else ""))
    if len(runs) == 1:  # one value has no spread to show, and "± 0" would claim one
        print(f"over 1 seed (n = 1, no sd): {shown}")
        return 0
    shown = ", ".join(f"{name} {pm(mean_sd([run[name] for run in runs]), 6)}" for name in runs[0])
    print(f"mean ± sd over {len(runs)} seeds: {shown}")
    return 0


def run_tasks(args: argparse.Namespace) -> int:
    """``tuner tasks``: one line per built-in or plugin task (name, origin, summary); exit code 0."""
    from tuner.tasks.loading import describe

    infos = describe()
    name_width, origin_width = (max(len(getattr(i, key)) for i in infos) for key in ("name", "origin"))
    for info in infos:
        print(f"{info.name.ljust(name_width)}  {info.origin.ljust(origin_width)}  {info.summary}")
    return 0
