"""The command line's arguments: the parser of every command, its flags and their types (one-line errors, exit 2).

Nothing heavy is imported here, so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any, NoReturn

from tuner import __version__
from tuner.cli.commands import run_evidence, run_plot, run_study, run_sync, run_tasks, run_train


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are tuner's one line, as :mod:`tuner.cli.main` prints a bad input's:
    ``tuner: error: FLAG: VALUE is not allowed (ALLOWED)``, exit code 2."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:  # argparse's own message names neither the command nor what it takes
            commands = next((a.choices for a in self._actions if isinstance(a.choices, dict)), {})
            command = commands.get(getattr(parsed, "command", None), self)
            if extra[0].startswith("-"):
                options = [o for a in command._actions for o in a.option_strings if o.startswith("--")]
                self.error(f"{extra[0]}: unknown option of {command.prog} (allowed: {', '.join(options)})")
            positionals = [a.metavar or a.dest for a in command._actions if not a.option_strings]
            allowed = f"{', '.join(positionals)}, then options" if positionals else "options only"
            self.error(f"{extra[0]!r}: an argument too many for {command.prog} (allowed: {allowed})")
        return parsed

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tuner: error: {self._reworded(message)}\n")

    def _reworded(self, message: str) -> str:
        """argparse's ``message`` as ``NAME: what is wrong (allowed: ...)``."""
        if found := re.fullmatch(r"argument (\S+): invalid choice: (.+) \(choose from (.+)\)", message):
            name, value, choices = found.groups()
            return f"{name}: {value} is not allowed (allowed: {choices.replace(chr(39), '')})"
        if found := re.fullmatch(r"argument (\S+): expected .*argument.*", message):
            return f"{found[1]}: no value given (allowed: {self._allowed(found[1])})"
        if found := re.fullmatch(r"argument (\S+): (.+)", message):  # our types' own words
            return f"{found[1]}: {found[2]}"
        if found := re.fullmatch(r"the following arguments are required: (.+)", message):
            return f"{found[1]}: missing (allowed: {'; '.join(map(self._allowed, found[1].split(', ')))})"
        if found := re.fullmatch(r"ambiguous option: (\S+) could match (.+)", message):
            return f"{found[1]}: ambiguous, an abbreviation of several options (allowed: one of {found[2]})"
        return message

    def _allowed(self, name: str) -> str:
        """What the argument ``name`` (a flag, a positional or ``command``) takes, in words."""
        for action in self._actions:
            if name in ("/".join(action.option_strings), action.metavar, action.dest):
                if action.choices:
                    return ", ".join(action.choices)
                return TYPE_ALLOWED.get(action.type) or action.help or "see --help"
        return "see --help"


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1; raises ``ArgumentTypeError`` (one line, exit code 2) otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed ({TYPE_ALLOWED[positive_int]})")
    return value


def seed_int(text: str) -> int:
    """An argparse type: a seed, an integer >= 0; raises ``ArgumentTypeError`` otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed ({TYPE_ALLOWED[seed_int]})")
    return value


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tracking-uri`` (``study``, ``plot`` and ``sync``)."""
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db): an SQLite file, "
        "http(s)://host:port or a database URL",
    )


def add_storage_argument(parser: argparse.ArgumentParser) -> None:
    """``--storage URL`` (``study``, ``plot``, ``evidence`` and ``sync``; default ``sqlite:///tuner.db``)."""
    parser.add_argument(
        "--storage", default="sqlite:///tuner.db", help="Optuna storage URL (default: sqlite:///tuner.db)"
    )


def add_stored_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """The experiment of ``plot`` and ``sync``: a file or shipped name, or ``--experiment NAME`` in the storage."""
    parser.add_argument(
        "experiment",
        nargs="?",
        help="experiment YAML file, or a shipped name (default: quickstart, unless --experiment)",
    )
    parser.add_argument(
        "--experiment", dest="name", metavar="NAME", help="the experiment's name in the storage, instead of its file"
    )


def finite_float(text: str) -> float:
    """An argparse type: a finite number; raises ``ArgumentTypeError`` for NaN, infinities and non-numbers."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed ({TYPE_ALLOWED[finite_float]})")
    return value


# What each type allows, in words: its errors say it, and so does a flag given without its value.
TYPE_ALLOWED: dict[Any, str] = {
    positive_int: "an integer >= 1",
    seed_int: "an integer >= 0",
    finite_float: "a finite number",
}


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` (``study`` and ``train``; default None: torch's own choice)."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="torch's CPU threads per training process (torch.set_num_threads; default: torch's choice, with "
        "--jobs the cores split among the workers); on a shared machine, 1 or 2 keep training from slowing to a crawl",
    )


TARGET_HELP = (
    "speed target: the validation objective whose first epoch is reported "
    "(default: the least good of the optimizers' final means)"
)


def build_parser() -> Parser:
    """The ``tuner`` command line: ``study``, ``plot``, ``sync``, ``train`` and ``tasks``."""
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
        help="shipped search spaces (adam adamw nadam radam adamax adagrad sgd rmsprop adam-wide nadam-wide) "
        "or .yaml paths",
    )
    study.add_argument("--task", help="task name or package.module:factory")
    add_storage_argument(study)
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
        "--population",
        type=positive_int,
        metavar="K",
        help="train K trials of a study at once as one vectorized model (default: the experiment's population, else 1)",
    )
    add_threads_argument(study)
    study.add_argument("--no-progress", action="store_true", help="no progress bars")
    study.add_argument("--target", type=finite_float, help=TARGET_HELP)
    study.set_defaults(func=run_study)

    plot = commands.add_parser(
        "plot", help="rebuild the figures and summary.md of an experiment from the storage, training nothing"
    )
    add_stored_experiment_arguments(plot)
    add_storage_argument(plot)
    add_tracking_arguments(plot)
    plot.add_argument(
        "--no-tracking", action="store_true", help="look up no MLflow run ids for the best configs' source"
    )
    plot.add_argument("--out", type=Path, help="output folder (default: runs/<experiment name>)")
    plot.add_argument("--target", type=finite_float, help=TARGET_HELP)
    # The keys of tuner.report.importance.IMPORTANCE_EVALUATORS (not imported here, so that --help stays instant).
    plot.add_argument(
        "--importance",
        choices=("ped-anova", "fanova", "mdi"),
        default="ped-anova",
        help="Optuna importance evaluator (default: ped-anova, which keeps the conditional schedule parameters)",
    )
    plot.set_defaults(func=run_plot)

    evidence = commands.add_parser(
        "evidence", help="one evidence.md over the stored studies of several experiments (every claim on every task)"
    )
    evidence.add_argument(
        "experiments",
        nargs="*",
        metavar="experiment",
        help="experiment YAML files or shipped names, in table order (or --experiment)",
    )
    evidence.add_argument(
        "--experiment",
        dest="names",
        nargs="+",
        metavar="NAME",
        help="the experiments' names in the storage, in table order, instead of their files (each with its default "
        "speed target)",
    )
    add_storage_argument(evidence)
    evidence.add_argument(
        "--out", type=Path, default=Path("runs/evidence"), help="output folder (default: runs/evidence)"
    )
    evidence.set_defaults(func=run_evidence)

    train = commands.add_parser("train", help="re-train an exported config and report mean ± sd")
    train.add_argument("config", type=Path, help="best-config YAML written by `tuner study`")
    train.add_argument("--seeds", type=positive_int, default=1, help="number of seeds: first, first+1, ... (default 1)")
    train.add_argument(
        "--first-seed",
        type=seed_int,
        metavar="S",
        help="the first seed (default: the config's training.seed, the seed it was selected on, which reproduces "
        "the trial and is optimistic; the config's seed + 1 gives the fresh seeds of tuner study's final evaluation)",
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
    add_stored_experiment_arguments(sync)
    add_storage_argument(sync)
    add_tracking_arguments(sync)
    sync.set_defaults(func=run_sync)

    tasks = commands.add_parser("tasks", help="list the built-in tasks and those of installed plugins")
    tasks.set_defaults(func=run_tasks)
    return parser
