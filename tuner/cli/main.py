"""``python -m tuner``: commands, argument parsing and exit codes.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback),
130 interrupted (finished trials are kept), 1 anything unexpected.
Heavy libraries are imported inside the commands so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from tuner import __version__
from tuner.errors import UserError, mask_url, url_failure


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed (an integer >= 1)")
    return value


def seed_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed (an integer >= 0)")
    return value


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db): an SQLite file, http(s)://host:port or a database URL",
    )


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed (a finite number)")
    return value


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="torch's CPU threads per training process (torch.set_num_threads; default: torch's choice, with --jobs the "
        "cores split among the workers); on a shared machine, 1 or 2 keep training from slowing to a crawl",
    )


TARGET_HELP = "speed target: the validation objective whose first epoch is reported (default: the least good of the optimizers' final means)"


def build_parser() -> Parser:
    parser = Parser(prog="tuner", description="Which optimizer, with which settings, trains this PyTorch model best.")
    parser.add_argument("--version", action="version", version=f"tuner {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    study = commands.add_parser("study", help="tune each optimizer of an experiment, then export the best configs")
    study.add_argument("experiment", nargs="?", help="experiment YAML file, or a shipped name (default: quickstart)")
    study.add_argument("--trials", type=positive_int, help="trials per optimizer (the study is topped up to this)")
    study.add_argument("--epochs", type=positive_int, help="epochs per trial")
    study.add_argument(
        "--optimizers",
        nargs="+",
        metavar="SPACE",
        help="shipped search spaces (adam adamw nadam radam adamax adagrad sgd rmsprop adam-wide nadam-wide) or .yaml paths",
    )
    study.add_argument("--task", help="task name or package.module:factory")
    study.add_argument(
        "--storage", default="sqlite:///tuner.db", help="Optuna storage URL (default: sqlite:///tuner.db)"
    )
    add_tracking_arguments(study)
    study.add_argument(
        "--no-tracking", action="store_true", help="log nothing to MLflow (`tuner sync` can do it later)"
    )
    study.add_argument("--out", type=Path, help="output folder (default: runs/<experiment name>)")
    study.add_argument("--seed", type=seed_int, help="seed of every trial; final seeds are seed+1 ... seed+N")
    study.add_argument("--final-seeds", type=positive_int, help="seeds the best configs are re-trained on (default 3)")
    study.add_argument(
        "--device", default="auto", help="auto (default: CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps"
    )
    study.add_argument("--amp", default="none", help="mixed precision: none (default) or bf16 autocast (CUDA only)")
    study.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="worker processes training trials at once (default 1; CUDA devices round-robin, CPU cores split)",
    )
    study.add_argument(
        "--batch-trials",
        type=positive_int,
        metavar="K",
        help="train K trials of a study at once as one vectorized model (default: the experiment's batch_trials, else 1)",
    )
    add_threads_argument(study)
    study.add_argument("--no-progress", action="store_true", help="no progress bars")
    study.add_argument("--target", type=finite_float, help=TARGET_HELP)
    study.set_defaults(func=run_study)

    plot = commands.add_parser(
        "plot", help="rebuild the figures and summary.md of an experiment from the storage, training nothing"
    )
    plot.add_argument(
        "experiment",
        nargs="?",
        help="experiment YAML file, or a shipped name (default: quickstart, unless --experiment)",
    )
    plot.add_argument(
        "--experiment", dest="name", metavar="NAME", help="the experiment's name in the storage, instead of its file"
    )
    plot.add_argument(
        "--storage", default="sqlite:///tuner.db", help="Optuna storage URL (default: sqlite:///tuner.db)"
    )
    plot.add_argument("--out", type=Path, help="output folder (default: runs/<experiment name>)")
    plot.add_argument("--target", type=finite_float, help=TARGET_HELP)
    # The keys of tuner.report.data.IMPORTANCE_EVALUATORS (not imported here, so that --help stays instant).
    plot.add_argument(
        "--importance",
        choices=("ped-anova", "fanova", "mdi"),
        default="ped-anova",
        help="Optuna importance evaluator (default: ped-anova, which keeps the conditional schedule parameters)",
    )
    plot.set_defaults(func=run_plot)

    train = commands.add_parser("train", help="re-train an exported config and report mean ± sd")
    train.add_argument("config", type=Path, help="best-config YAML written by `tuner study`")
    train.add_argument("--seeds", type=positive_int, default=1, help="number of seeds: first, first+1, ... (default 1)")
    train.add_argument(
        "--first-seed",
        type=seed_int,
        metavar="S",
        help="the first seed (default: the config's training.seed, the seed it was selected on, which reproduces the trial "
        "and is optimistic; the config's seed + 1 gives the fresh seeds of tuner study's final evaluation)",
    )
    train.add_argument(
        "--device", default="auto", help="auto (default: CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps"
    )
    train.add_argument("--amp", help="mixed precision: none or bf16 (CUDA only); default: the config's training.amp")
    add_threads_argument(train)
    train.set_defaults(func=run_train)

    sync = commands.add_parser(
        "sync", help="rebuild or complete the MLflow runs of an experiment from the Optuna storage"
    )
    sync.add_argument(
        "experiment",
        nargs="?",
        help="experiment YAML file, or a shipped name (default: quickstart, unless --experiment)",
    )
    sync.add_argument(
        "--experiment", dest="name", metavar="NAME", help="the experiment's name in the storage, instead of its file"
    )
    sync.add_argument(
        "--storage", default="sqlite:///tuner.db", help="Optuna storage URL (default: sqlite:///tuner.db)"
    )
    add_tracking_arguments(sync)
    sync.set_defaults(func=run_sync)

    tasks = commands.add_parser("tasks", help="list the built-in tasks and those of installed plugins")
    tasks.set_defaults(func=run_tasks)
    return parser


def run_study(args: argparse.Namespace) -> int:
    import dataclasses

    from tuner.run import experiment as run

    run.run_study(run.Options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(run.Options)}))
    return 0


def run_sync(args: argparse.Namespace) -> int:
    import optuna

    from tuner.study.connection import open_storage
    from tuner.study.resume import experiment_names
    from tuner.tracking.mirror import Mirror, SyncCount, check_reachable, tracking_uri

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = _select_experiment(args)[0]
    uri, where = tracking_uri(args.tracking_uri)
    check_reachable(uri, where)
    storage = open_storage(args.storage, must_exist=True)
    studies = [s for s in optuna.get_all_study_names(storage) if s.startswith(f"{name}/")]
    if not studies:
        present = ", ".join(experiment_names(storage)) or "none"
        raise UserError(
            f"--storage: {mask_url(args.storage)!r} has no study of experiment {name!r} (experiments there: {present})"
        )
    from mlflow.exceptions import MlflowException

    mirror = Mirror(uri, name, storage, args.storage, __version__)
    total = SyncCount()
    for study in studies:
        try:
            count = mirror.sync(study)
            mirror.settle(study)
        except MlflowException as err:  # never a traceback: the store's refusal, in one line (no run is left RUNNING)
            raise UserError(
                f"--tracking-uri {mask_url(uri)!r}: MLflow refused a write while syncing {study!r}: {url_failure(err, uri)}; "
                "the Optuna storage is unchanged"
            ) from None
        total += count
        print(
            f"{study}: {count.written} runs written, {count.kept} already there, {count.deleted} deleted (cut short or stale)"
        )
    print(
        f"MLflow experiment {name!r} at {mask_url(uri)} mirrors {len(studies)} studies: {total.written + total.kept} runs"
    )
    return 0


def _select_experiment(args: argparse.Namespace) -> tuple[str, float | None, str]:
    """``plot`` and ``sync``: the experiment's name, target, and where they came from (every study of that name is used)."""
    from tuner.config import experiment as config

    if args.experiment and args.name:
        raise UserError(f"--experiment {args.name!r} and the experiment file {args.experiment!r}: give one, not both")
    if args.name:
        return args.name, getattr(args, "target", None), "--experiment"
    experiment = config.load_experiment(
        config.find_experiment(args.experiment), {"target": getattr(args, "target", None)}
    )
    return experiment.name, experiment.target, experiment.at("name")


def run_plot(args: argparse.Namespace) -> int:
    import optuna

    from tuner.run.experiment import check_writable_folder
    from tuner.run.outputs import write_outputs
    from tuner.study.connection import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name, target, where = _select_experiment(args)
    out = args.out or Path("runs") / name
    check_writable_folder(out)
    source = {"experiment": name, "storage": mask_url(args.storage), "tuner_version": __version__}
    done = write_outputs(
        open_storage(args.storage, must_exist=True),
        name,
        out,
        target=target,
        importance=args.importance,
        source=source,
        where=where,
    )
    print(done.summary)
    print("\n" + done.evidence)
    files = (
        ["best.yaml"] * (done.best is not None)
        + [p.name for p in done.configs.values()]
        + [str(p.relative_to(out)) for p in done.report_files]
    )
    print(f"\noutputs in {out}/ (every study of experiment {name!r}): {', '.join(files)}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from tuner.config.experiment import MAX_SEED
    from tuner.config.export import load_config
    from tuner.report.statistics import mean_sd, pm
    from tuner.tasks import load_data, load_task
    from tuner.train.trainer import check_amp, keep_freed_memory, objective_label, resolve_device, train

    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    first = cfg.seed if args.first_seed is None else args.first_seed
    if first + args.seeds - 1 > MAX_SEED:
        raise UserError(
            f"--first-seed {first} with --seeds {args.seeds}: seeds up to {first + args.seeds - 1} are not allowed (at most {MAX_SEED})"
        )
    device = resolve_device(args.device)
    if args.amp is not None:
        cfg = dataclasses.replace(cfg, amp=args.amp)
    check_amp(cfg.amp, device, "--amp" if args.amp else f"{args.config}: training.amp")
    task = load_task(cfg.task, cfg.task_args, f"{args.config}: training.task")
    data = load_data(task, device, f"{args.config}: training.task")
    label = objective_label(cfg.objective, task.metric)
    objectives, metrics = [], []
    if args.first_seed is None:
        print(
            f"seeds from {first}, the config's own: seed {first} reproduces the trial it was selected on (optimistic); "
            f"--first-seed {first + 1} for fresh seeds",
            file=sys.stderr,
        )
    for seed in range(first, first + args.seeds):
        result = train(task, data, cfg, seed=seed, test=True)
        last = result.history[-1]
        objectives.append(last.objective(cfg.objective))
        metrics.append(last.val_metric)
        parts = [f"val {label} {objectives[-1]:.6g}"]
        if task.metric != label:
            parts.append(f"val {task.metric} {last.val_metric:.6g}")
        if result.test_metric is not None:
            parts.append(f"test {task.metric} {result.test_metric:.6g}")
        print(f"seed {seed}: {', '.join(parts)}" + (f" ({result.reason})" if result.reason else ""))
    summary = [f"val {label}: {pm(mean_sd(objectives), 6)}"]
    if task.metric != label:
        summary.append(f"val {task.metric}: {pm(mean_sd(metrics), 6)}")
    print(f"{'; '.join(summary)} over {args.seeds} seed(s)")
    return 0


def run_tasks(args: argparse.Namespace) -> int:
    from tuner.tasks import describe

    infos = describe()
    name_width, origin_width = (max(len(getattr(i, key)) for i in infos) for key in ("name", "origin"))
    for info in infos:
        print(f"{info.name.ljust(name_width)}  {info.origin.ljust(origin_width)}  {info.summary}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"tuner: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tuner: interrupted; finished trials are kept: run the same command to resume", file=sys.stderr)
        return 130
