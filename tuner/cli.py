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
from typing import Any

from tuner import __version__
from tuner.errors import UserError


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


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed (a finite number)")
    return value


TARGET_HELP = "speed target: the validation objective whose first epoch is reported (default: the least good of the optimizers' final means)"


def build_parser() -> Parser:
    parser = Parser(prog="tuner", description="Which optimizer, with which settings, trains this PyTorch model best.")
    parser.add_argument("--version", action="version", version=f"tuner {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    study = commands.add_parser("study", help="tune each optimizer of an experiment, then export the best configs")
    study.add_argument("experiment", nargs="?", help="experiment YAML file, or a shipped name (default: quickstart)")
    study.add_argument("--trials", type=positive_int, help="trials per optimizer (the study is topped up to this)")
    study.add_argument("--epochs", type=positive_int, help="epochs per trial")
    study.add_argument("--optimizers", nargs="+", metavar="SPACE", help="shipped search spaces (adam adamw sgd rmsprop) or .yaml paths")
    study.add_argument("--task", help="task name or package.module:factory")
    study.add_argument("--storage", default="sqlite:///tuner.db", help="Optuna storage URL (default: sqlite:///tuner.db)")
    study.add_argument("--out", type=Path, help="output folder (default: runs/<experiment name>)")
    study.add_argument("--seed", type=seed_int, help="seed of every trial; final seeds are seed+1 ... seed+N")
    study.add_argument("--final-seeds", type=positive_int, help="seeds the best configs are re-trained on (default 3)")
    study.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda or cuda:N")
    study.add_argument("--no-progress", action="store_true", help="no progress bars")
    study.add_argument("--target", type=finite_float, help=TARGET_HELP)
    study.set_defaults(func=run_study)

    plot = commands.add_parser("plot", help="rebuild the figures and summary.md of an experiment from the storage, training nothing")
    plot.add_argument("experiment", nargs="?", help="experiment YAML file, or a shipped name (default: quickstart, unless --experiment)")
    plot.add_argument("--experiment", dest="name", metavar="NAME", help="the experiment's name in the storage, instead of its file")
    plot.add_argument("--storage", default="sqlite:///tuner.db", help="Optuna storage URL (default: sqlite:///tuner.db)")
    plot.add_argument("--out", type=Path, help="output folder (default: runs/<experiment name>)")
    plot.add_argument("--target", type=finite_float, help=TARGET_HELP)
    # The keys of tuner.report.IMPORTANCE_EVALUATORS (not imported here, so that --help stays instant).
    plot.add_argument("--importance", choices=("ped-anova", "fanova", "mdi"), default="ped-anova",
                      help="Optuna importance evaluator (default: ped-anova, which keeps the conditional schedule parameters)")  # fmt: skip
    plot.set_defaults(func=run_plot)

    train = commands.add_parser("train", help="re-train an exported config and report mean ± sd")
    train.add_argument("config", type=Path, help="best-config YAML written by `tuner study`")
    train.add_argument("--seeds", type=positive_int, default=1, help="number of seeds: the config's seed, seed+1, ... (default 1)")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    train.set_defaults(func=run_train)

    tasks = commands.add_parser("tasks", help="list the built-in tasks")
    tasks.set_defaults(func=run_tasks)
    return parser


def run_study(args: argparse.Namespace) -> int:
    import optuna

    from tuner import analysis, config, export
    from tuner.study import Setup, StudyRunner, check_components, check_resumable, mask_url, open_storage, study_name
    from tuner.tasks import load_data, load_task
    from tuner.train import resolve_device

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = config.find_experiment(args.experiment)
    # Paths given on the command line are relative to the working directory.
    refs = args.optimizers and [str(Path(r).resolve()) if r.endswith((".yaml", ".yml")) else r for r in args.optimizers]
    overrides = {"trials": args.trials, "epochs": args.epochs, "optimizers": refs, "task": args.task, "seed": args.seed, "final_seeds": args.final_seeds,
                 "target": args.target}  # fmt: skip
    experiment = config.load_experiment(path, overrides)
    device = resolve_device(args.device)
    task = load_task(experiment.task, experiment.task_args, experiment.at("task"))
    setup = Setup.resolve(experiment, task)
    check_components(experiment, setup)
    out = args.out or Path("runs") / experiment.name
    _check_writable_folder(out)
    with_args = f" with task_args {experiment.task_args}" if experiment.task_args else ""
    data = load_data(task, device, experiment.at("task") + with_args)
    storage = open_storage(args.storage)
    for space in experiment.optimizers:
        check_resumable(storage, study_name(experiment, space), setup, space, experiment.schedules)
    seeds = [experiment.seed + i for i in range(1, experiment.final_seeds + 1)]
    print(f"experiment {experiment.name} ({experiment.source}): task {task.name}, {experiment.trials} trials x {len(experiment.optimizers)} optimizers, "
          f"{setup.epochs} epochs, device {device}, storage {mask_url(args.storage)}", file=sys.stderr)

    source = {"experiment": experiment.name, "experiment_file": experiment.source, "storage": mask_url(args.storage), "tuner_version": __version__}
    summaries, configs = [], {}
    for space in experiment.optimizers:
        runner = StudyRunner(experiment, space, setup, task, data, storage)
        with _progress(runner, experiment.trials, disable=args.no_progress) as progress:
            runner.run(experiment.trials, progress)
        final = runner.final_evaluation(seeds)
        summary = analysis.summarize(space.name, runner.study, final)
        summaries.append(summary)
        if summary.best_trial is not None:
            configs[space.name] = analysis.best_config(summary, runner.study, setup.label, setup.direction, source)

    best = analysis.winner(summaries, setup.direction)
    for name, cfg in configs.items():
        export.write_config(cfg, out / f"best-{name}.yaml")
    if best is not None:
        export.write_config(configs[best.optimizer], out / "best.yaml")
    written = ["best.yaml"] * (best is not None) + [f"best-{n}.yaml" for n in configs]
    report_files = write_report(storage, experiment.name, [s.name for s in experiment.optimizers], out, experiment.target)
    print(f"\noutputs in {out}/: {', '.join(written) or 'none (no trial completed)'}; report: {', '.join(str(p.relative_to(out)) for p in report_files)}")
    if best is not None:
        print(f"winner: {best.optimizer} (final-seed validation {setup.label} mean over seeds {seeds})")
    return 0


def write_report(storage: Any, experiment: str, spaces: list[str] | None, out: Path, target: float | None, importance: str = "ped-anova",
                 where: str = "--experiment") -> list[Path]:  # fmt: skip
    """Figures in ``out/plots/`` and ``out/summary.md`` from the studies of ``experiment`` in ``storage``; prints the summary.

    ``spaces`` picks and orders the studies (None: all of the experiment's).
    Returns the paths written, the summary first.
    """
    from tuner import report

    built = report.build_report(report.load_studies(storage, experiment, spaces, where), target=target, evaluator=importance)
    paths = report.write_report(built, out)
    print(report.summary(built, out))
    return paths


def run_plot(args: argparse.Namespace) -> int:
    import optuna

    from tuner import config
    from tuner.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.experiment and args.name:
        raise UserError(f"--experiment {args.name!r} and the experiment file {args.experiment!r}: give one, not both")
    if args.name:
        name, spaces, target, where = args.name, None, args.target, "--experiment"
    else:
        experiment = config.load_experiment(config.find_experiment(args.experiment), {"target": args.target})
        name, spaces, target, where = experiment.name, [s.name for s in experiment.optimizers], experiment.target, experiment.at("name")
    out = args.out or Path("runs") / name
    _check_writable_folder(out)
    _check_storage_exists(args.storage)
    paths = write_report(open_storage(args.storage), name, spaces, out, target, args.importance, where)
    print(f"\noutputs in {out}/: {', '.join(str(p.relative_to(out)) for p in paths)}")
    return 0


def _check_storage_exists(url: str) -> None:
    """An SQLite storage file must exist: reading a report creates no database."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from tuner.study import mask_url

    try:
        parsed = make_url(url)
    except ArgumentError:
        return  # open_storage names the bad URL
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") and not Path(parsed.database).is_file():
        raise UserError(f"--storage: {mask_url(url)!r}: no such database file (allowed: the storage that tuner study wrote, e.g. sqlite:///tuner.db)")


def _check_writable_folder(path: Path) -> None:
    """``path`` is a folder, or can be made one, that we can write to; creates nothing."""
    import os

    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(f"--out: {str(path)!r} cannot be a folder here: {str(existing)!r} is not a writable folder (allowed: a folder, created if missing)")


class _progress:
    """A tqdm bar for one study: trials counted of the budget, best so far, elapsed and ETA."""

    def __init__(self, runner: Any, budget: int, disable: bool) -> None:
        from tqdm.auto import tqdm

        from tuner.study import finished

        done = min(finished(runner.study), budget)
        self.bar = tqdm(total=budget, initial=done, desc=runner.space.name, unit="trial", disable=disable, dynamic_ncols=True)

    def __enter__(self) -> _progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def __call__(self, runner: Any, trial: Any) -> None:
        from tuner.study import best_trial, outcome

        state = outcome(trial)
        if state == "failed":
            self.bar.write(f"{runner.name} trial {trial.number} failed: {trial.user_attrs.get('reason')}")
        best = best_trial(runner.live)
        if best is not None:
            self.bar.set_postfix_str(f"best {best.value:.4g} (#{best.number})", refresh=False)
        self.bar.update(1)


def run_train(args: argparse.Namespace) -> int:
    from tuner.analysis import mean_sd, pm
    from tuner.export import load_config
    from tuner.tasks import load_data, load_task
    from tuner.train import objective_label, resolve_device, train

    cfg = load_config(args.config)
    device = resolve_device(args.device)
    task = load_task(cfg.task, cfg.task_args, f"{args.config}: training.task")
    data = load_data(task, device, f"{args.config}: training.task")
    label = objective_label(cfg.objective, task.metric)
    objectives, metrics = [], []
    for seed in range(cfg.seed, cfg.seed + args.seeds):
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

    descriptions = describe()
    width = max(map(len, descriptions))
    for name, line in descriptions.items():
        print(f"{name.ljust(width)}  {line}")
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
