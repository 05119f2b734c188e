"""How much slower is ``tuner study`` than the same trainings as a bare PyTorch loop or a hand-written Optuna loop?

One run of this script does, on a fresh SQLite storage in a temporary folder:

1. **tuner**: ``tuner.cli.main.main(["study", EXPERIMENT, ...])`` in-process, timed as
   a whole (task data loading, every trial, the final evaluation, the exported
   YAML). Before the clock starts, an untimed 1-trial, 1-epoch ``tuner study``
   does the one-off imports (torch's first ``optimizer.step()`` pulls in
   torch._dynamo and sympy; Optuna's storage pulls in SQLAlchemy and Alembic),
   so one-off import time counts on neither side; its time is printed apart.
   It also sets the allocator as every training command does
   (``tuner.train.trainer.keep_freed_memory``), for every side of this process.
   **tracked** is the same command with MLflow tracking on (an SQLite file in
   the temporary folder, ``--tracking-uri``): its follower process starts
   (MLflow import, database creation) while the first trials train, and the
   command ends only when every run is in MLflow. The tracked and untracked
   commands are timed one after the other.
2. **bare**: every trial of every study is read back from the storage and the
   same config (``trial.user_attrs["config"]``) is trained again, for the epochs
   that trial actually ran (``len(trial.intermediate_values)``: fewer for a pruned
   or diverged trial), by a hand-written loop: seed, ``task.model()``,
   ``torch.optim.<class>(**kwargs)``, the same LR schedule (stepped per optimizer
   step), a ``torch.randperm`` shuffle per epoch, and a validation loss and metric
   per epoch under ``torch.no_grad()``; no Optuna, no storage. The final
   evaluation (each study's best config re-trained on the final seeds, with a
   test evaluation) is re-run too, and so is the evidence's ablation (an Adam or
   AdamW best config re-trained on the final seeds with its bias correction off,
   ``tuner.measure.bias_correction.AdamCorrections``, as a user who wants that
   evidence would train it by hand), so every side does the same training work.
3. **hand** (a hand-written Optuna loop): the same trainings with the same bare
   loop, each trial inside what a user writing their own objective would do, on
   a fresh SQLite file (``hand.db``, one study per tuner study, the same
   direction, ``MedianPruner(n_startup_trials=5, n_warmup_steps=epochs // 4)``,
   the default sampler): ``study.enqueue_trial(params)`` then
   ``study.ask(distributions)`` (the tuner trial's own parameters: the
   enqueued values replace sampling, so no sampler cost is counted on this side,
   while the tuner's TPE sampling is), ``trial.set_user_attr("config", ...)``,
   ``trial.report`` and ``trial.should_prune()`` after every epoch (the decision
   is ignored: each trial trains for the epochs the tuner's trial ran) and
   ``study.tell`` with the value, or with the state of a trial the tuner pruned,
   stopped as diverged or failed. The final evaluation is re-run as on the
   bare side, without Optuna. Optuna's log level is WARNING on every side (the
   tuner sets it), so no side pays for a log line per trial.

4. **paired**: ``tuner study`` once more, each of its trainings followed at
   once by the same training in the bare loop, timed apart (``bench/paired.py``):
   the tuner's time is the run's less those trainings, the bare loop's is
   theirs. On a shared machine the speed drifts by 15-20% over a minute, which
   sides timed one after the other measure as much as the tuner; paired, both
   sides train within a second of each other. The ratio targets are judged on
   this ratio; the sequential one is printed beside it.

It prints the wall-clock times of the three sides, the ratios tuner / bare and
hand / bare, and the same for process CPU time (less affected by other
processes), the number of trainings, torch's CPU thread count and the load
average, and checks that the bare and hand loops reproduced the tuner's
validation objectives (they match exactly on CPU). With ``--repeat N`` every
side runs N times, alternating, and the fastest of each is kept. On a busy
machine use ``--threads 1``: torch's intra-op threads slow down many times over
when another process holds a core.

Then where the difference goes (``bench/costs.py`` times the tuner's own
functions in-process and counts its SQL statements): per trial (the trainer
beyond the bare loop's training, the pruner's calls, sampling, storing, the
budget ticket with its storage read) and fixed (the final evaluation beyond
the bare loop's final runs, with the evidence's ablation and step sizes; the
report; data loading; the rest), in seconds, ms a trial and share of the
difference; the same for the tracked run against the untracked one. Last,
issue 19's targets, each with its verdict: tuner / bare <= 1.10 (<= 1.02 with
100 epochs a trial or more), tracked / untracked <= 1.05, the report under
1.5 s and ``python -m tuner --help`` under 0.3 s. Imports are paid once per
process and counted on no side (the warm-up's time is printed), except the
report's own (matplotlib, scipy, scikit-learn), which ``tuner study`` pays in
every run and no other side pays: the report is also written again in a new
process from the run's storage (``costs.fresh_report``), and its target is
judged there; ``bench/memory.py`` measures the RSS growth over 200 trials.

Reading the result: what Optuna adds to the bare loop is a fixed cost per epoch
(``trial.report`` and ``trial.should_prune``) and per trial (sampling, ask,
tell), whatever the model. In the hand loop each epoch's calls are round trips
to the SQLite storage; ``tuner study`` makes them on an in-memory copy of the
study and writes each finished trial to the storage once, but it samples with
TPE, which the hand loop skips. These costs weigh most on tasks whose epochs
are short, such as ``quickstart`` (about 12 ms per epoch on one CPU thread);
``--epochs``/``--trials`` change the mix.

Run from the repository root::

    make bench                                   # python bench/overhead.py $(ARGS)
    make bench ARGS="--trials 10 --epochs 5"
    .venv/bin/python bench/overhead.py --help
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import math
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import torch

import tuner.cli.arguments
import tuner.cli.main
from tuner.config import experiment as tuner_config
from tuner.config.experiment import Config
from tuner.config.export import config_from_dict
from tuner.measure.bias_correction import AdamCorrections
from tuner.tasks.loading import load_task
from tuner.tasks.task import Data, Task
from tuner.train.optim import build_scheduler

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from costs import (
    Clock,
    Side,
    busy_share,
    command_seconds,
    fresh_report,
    load_average,
    print_costs,
    print_tracking,
    verdict,
)
from paired import Paired


@dataclass(frozen=True)
class Run:
    """One training the tuner did: a config, a seed, the epochs it ran and its last validation objective.

    ``kind``: a tuning ``trial``, a ``final`` run (with a test evaluation) or an ``ablation`` run (the config with its
    bias correction off). ``study``, ``direction`` and ``trial`` (the stored trial; None but for a tuning trial) are
    for the hand side.
    """

    config: Config
    seed: int
    epochs: int
    kind: str
    objective: float
    study: str
    direction: optuna.study.StudyDirection
    trial: optuna.trial.FrozenTrial | None = None


def time_tuner(
    args: argparse.Namespace, folder: str, budget: list[str], tracking: bool = False, clock: Clock | None = None
) -> tuple[float, float]:
    """Wall and CPU seconds of one in-process ``tuner study`` into ``folder``/bench.db (with ``tracking``:
    and MLflow into ``folder``/mlflow.db; the follower process's CPU time is not counted, its wall time is),
    its parts timed by ``clock`` if given."""
    track = ["--tracking-uri", f"sqlite:///{folder}/mlflow.db"] if tracking else ["--no-tracking"]
    argv = [
        "study",
        args.experiment,
        "--storage",
        f"sqlite:///{folder}/bench.db",
        "--out",
        folder,
        "--no-progress",
        "--device",
        args.device,
        *track,
        *budget,
    ]
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), clock or contextlib.nullcontext():
        start, cpu = time.perf_counter(), time.process_time()
        code = tuner.cli.main.main(argv)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if code != 0:
        sys.exit(f"tuner study exited with {code}:\n{log.getvalue()}")
    return seconds, cpu


def read_runs(storage: str) -> list[Run]:
    """Every training of every study in ``storage``: the trials, then each study's final-evaluation seeds."""
    runs = []
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        for trial in trials:
            values = trial.intermediate_values
            if values:  # a trial that failed before its first epoch trained nothing worth timing
                cfg = config_from_dict(trial.user_attrs["config"])
                runs.append(Run(cfg, cfg.seed, len(values), "trial", values[max(values)], name, study.direction, trial))
        final = study.user_attrs.get("final")
        if final:
            cfg = config_from_dict(trials[final["trial"]].user_attrs["config"])
            for seed, history, objective in zip(final["seeds"], final["history"], final["val_objective"]):
                runs.append(Run(cfg, seed, len(history["epoch"]), "final", objective, name, study.direction))
            ablated = final.get("bias_correction_off") or {"seeds": [], "history": []}
            for seed, history in zip(ablated["seeds"], ablated["history"]):
                objective = history["val_loss" if cfg.objective == "loss" else "val_metric"][-1]
                runs.append(Run(cfg, seed, len(history["epoch"]), "ablation", objective, name, study.direction))
    return runs


def train_bare(task: Task, data: Data, run: Run, on_epoch: Callable[[int, float], object] | None = None) -> float:
    """The loop a careful user would write by hand for ``run``; returns the last validation objective.

    ``on_epoch(epoch, objective)`` (epochs count from 1) is called after every epoch; what it returns is ignored.
    """
    cfg, seed, epochs = run.config, run.seed, run.epochs
    device = data.train.x.device
    x, y, n, batch = data.train.x, data.train.y, len(data.train.x), cfg.batch_size
    torch.manual_seed(seed)
    model = task.model().to(device)
    if run.kind == "ablation":  # torch's Adam or AdamW, operation for operation, with both corrections off
        optimizer: torch.optim.Optimizer = AdamCorrections(
            model.parameters(),
            **cfg.optimizer_kwargs,
            decoupled_weight_decay=cfg.optimizer == "AdamW",
            correct_first=False,
            correct_second=False,
        )
    else:
        optimizer = getattr(torch.optim, cfg.optimizer)(model.parameters(), **cfg.optimizer_kwargs)
    # The schedule spans the full run (cfg.epochs), even for a trial stopped early.
    scheduler = build_scheduler(cfg.schedule, cfg.schedule_params, optimizer, cfg.epochs * math.ceil(n / batch))
    order = torch.Generator(device=device).manual_seed(seed)
    val_loss = val_metric = math.nan
    for epoch in range(1, epochs + 1):
        model.train()
        permutation = torch.randperm(n, generator=order, device=device)
        xs, ys = x[permutation], y[permutation]
        for start in range(0, n, batch):
            loss = task.loss(model(xs[start : start + batch]), ys[start : start + batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        model.eval()
        with torch.no_grad():
            output = model(data.val.x)
            val_loss, val_metric = task.loss(output, data.val.y).item(), task.score(output, data.val.y)
        if on_epoch is not None:
            on_epoch(epoch, val_loss if cfg.objective == "loss" else val_metric)
    if run.kind == "final":  # with a test evaluation
        with torch.no_grad():
            output = model(data.test.x)
            task.loss(output, data.test.y).item(), task.score(output, data.test.y)
    return val_loss if cfg.objective == "loss" else val_metric


def bare_run(task: Task, data: Data, config: Config, seed: int, epochs: int, kind: str) -> float:
    """:func:`train_bare` of one run given by its parts (as :class:`paired.Paired` calls it)."""
    return train_bare(task, data, Run(config, seed, epochs, kind, math.nan, "", optuna.study.StudyDirection.MINIMIZE))


def train_hand(task: Task, data: Data, run: Run, studies: dict[str, optuna.Study], storage: str) -> float:
    """``run`` as one trial of a hand-written Optuna loop on ``storage`` (a final or ablation run: bare)."""
    if run.trial is None:
        return train_bare(task, data, run)
    if run.study not in studies:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, run.config.epochs // 4))
        studies[run.study] = optuna.create_study(
            storage=storage, study_name=run.study, direction=run.direction, pruner=pruner
        )
    study = studies[run.study]
    study.enqueue_trial(run.trial.params)
    trial = study.ask(run.trial.distributions)
    trial.set_user_attr("config", run.trial.user_attrs["config"])

    def report(epoch: int, value: float) -> bool:
        trial.report(value, epoch)
        return trial.should_prune()  # ignored: the trial trains for the epochs the tuner's did

    value = train_bare(task, data, run, report)
    if run.trial.state == optuna.trial.TrialState.COMPLETE:
        study.tell(trial, value)
    else:  # pruned, diverged (PRUNED) or failed (FAIL), as the tuner stored it
        study.tell(trial, state=run.trial.state)
    return value


def time_side(runs: list[Run], device: str, storage: str | None = None) -> Side:
    """Load the task's data and redo ``runs`` by hand, bare or (with ``storage``) in a hand-written Optuna loop."""
    start, cpu = time.perf_counter(), time.process_time()
    task = load_task(runs[0].config.task, runs[0].config.task_args)
    data = task.data().to(device)
    load = time.perf_counter() - start
    seconds = {"trial": 0.0, "final": 0.0, "ablation": 0.0}  # by kind of run
    results: list[float] = []
    studies: dict[str, optuna.Study] = {}
    for r in runs:
        started = time.perf_counter()
        if storage is None:
            results.append(train_bare(task, data, r))
        else:
            results.append(train_hand(task, data, r, studies, storage))
        seconds[r.kind] += time.perf_counter() - started
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    # A diverged trial stores NaN where the bare loop sees inf or NaN.
    matched = sum(
        a == r.objective or not (math.isfinite(a) or math.isfinite(r.objective)) for a, r in zip(results, runs)
    )
    return Side(wall, cpu, seconds["trial"], seconds["final"], seconds["ablation"], load, matched)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python bench/overhead.py --trials 10 --epochs 5 --repeat 3",
    )
    parser.add_argument(
        "--experiment", default="quickstart", help="shipped experiment name or YAML path (default: quickstart)"
    )
    parser.add_argument(
        "--trials", type=tuner.cli.arguments.positive_int, help="trials per optimizer (default: the experiment's)"
    )
    parser.add_argument(
        "--epochs", type=tuner.cli.arguments.positive_int, help="epochs per trial (default: the experiment's)"
    )
    parser.add_argument(
        "--repeat",
        type=tuner.cli.arguments.positive_int,
        default=1,
        help="runs of each side, alternating; the fastest is kept (default 1)",
    )
    parser.add_argument(
        "--threads",
        type=tuner.cli.arguments.positive_int,
        help="torch.set_num_threads(N) first (default: torch's own choice)",
    )
    parser.add_argument("--device", default="cpu", help="device of both sides (default: cpu)")
    args = parser.parse_args()
    load, others = load_average(), busy_share()
    if args.threads:
        torch.set_num_threads(args.threads)

    experiment = tuner_config.load_experiment(tuner_config.find_experiment(args.experiment))
    budget = [
        *(["--trials", str(args.trials)] if args.trials else []),
        *(["--epochs", str(args.epochs)] if args.epochs else []),
    ]
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as folder:
        warm_up, _ = time_tuner(args, folder, ["--trials", "1", "--epochs", "1", "--final-seeds", "1"])

    tuner_runs: list[tuple[float, float, Clock]] = []  # (wall, cpu, its parts) per repeat, and the same for:
    tracked_runs: list[tuple[float, float, Clock]] = []
    reports: list[tuple[float, float]] = []  # the report in a new process: seconds to its result, to its end
    pairs: list[tuple[Paired, float]] = []  # a paired run and its wall seconds
    hand: list[Side] = []
    bare: list[Side] = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="tuner-bench-") as folder:
            clock = Clock()
            tracked_runs.append((*time_tuner(args, folder, budget, tracking=True, clock=clock), clock))
        with tempfile.TemporaryDirectory(prefix="tuner-bench-") as folder:
            clock = Clock()
            tuner_runs.append((*time_tuner(args, folder, budget, clock=clock), clock))
            reports.append(fresh_report(f"sqlite:///{folder}/bench.db", experiment.name))
            runs = read_runs(f"sqlite:///{folder}/bench.db")
            hand.append(time_side(runs, args.device, f"sqlite:///{folder}/hand.db"))
        bare.append(time_side(runs, args.device))
        with tempfile.TemporaryDirectory(prefix="tuner-bench-") as folder, Paired(bare_run) as paired:
            wall, _ = time_tuner(args, folder, budget)
        pairs.append((paired, wall))

    kinds = collections.Counter(r.kind for r in runs)
    trials, epochs = kinds["trial"], sum(r.epochs for r in runs)
    print(
        f"experiment {experiment.name}: {trials} trials + {kinds['final']} final runs + {kinds['ablation']} ablation "
        f"runs = {epochs} epochs; "
        f"results equal to tuner's: bare {bare[-1].matched}/{len(runs)}, hand {hand[-1].matched}/{len(runs)}"
    )
    print(
        f"device {args.device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"optuna {optuna.__version__}; load average before/after {load} / {load_average()}; "
        f"untimed warm-up (one-off imports) {warm_up:.1f} s"
    )
    fastest = min(tuner_runs, key=lambda run: run[0])
    tracked = min(tracked_runs, key=lambda run: run[0])
    best_bare = min(bare, key=lambda side: side.wall)
    print(
        "sides: tuner = `tuner study`; hand = the same trainings in a hand-written Optuna loop; bare = the same "
        "trainings in a bare PyTorch loop"
    )
    if others is not None and others > 0.1:
        print(
            f"  (before the run other processes kept {100 * others:.0f}% of the cores busy: they share the cores, and "
            "these timings are unreliable)"
        )
    print(f"{'':6} {'tuner s':>8} {'hand s':>8} {'bare s':>8} {'tuner/bare':>10} {'hand/bare':>10}")
    for k, label in enumerate(("wall", "cpu")):
        tuner_s, hand_s, bare_s = (
            min(t[k] for t in tuner_runs),
            min((h.wall, h.cpu)[k] for h in hand),
            min((b.wall, b.cpu)[k] for b in bare),
        )
        print(f"{label:6} {tuner_s:8.2f} {hand_s:8.2f} {bare_s:8.2f} {tuner_s / bare_s:10.3f} {hand_s / bare_s:10.3f}")
    best_pair, paired_wall = min(pairs, key=lambda pair: pair[0].ratio(pair[1])[2])
    paired_tuner, paired_bare, paired_ratio = best_pair.ratio(paired_wall)
    print(
        f"paired {paired_tuner:8.2f} {'':8} {paired_bare:8.2f} {paired_ratio:10.3f}   (one more tuner run, each "
        "training followed at once by the bare loop's, bench/paired.py: the machine's drift falls on both sides)"
    )
    print(
        "       paired, the trainings alone, tuner's trainer / bare loop: "
        + ", ".join(
            f"{kind} {best_pair.trainer[kind]:.2f} / {best_pair.bare_loop[kind]:.2f} s"
            for kind in ("trial", "final", "ablation")
        )
    )
    if args.repeat > 1:
        print(
            "wall s of each run: "
            + "; ".join(
                f"{side} {', '.join(f'{w:.2f}' for w in walls)}"
                for side, walls in (
                    ("tuner", [t[0] for t in tuner_runs]),
                    ("tracked", [t[0] for t in tracked_runs]),
                    ("hand", [h.wall for h in hand]),
                    ("bare", [b.wall for b in bare]),
                )
            )
        )
    print_costs(fastest[2], fastest[0], trials, best_bare)
    print_tracking(tracked[2], tracked[0], fastest[0], trials)

    per_trial = fastest[2].total("run_trial") / max(1, trials)
    limit = 1.02 if (args.epochs or experiment.epochs) >= 100 else 1.10  # issue 19: 1.02 for trials of 100 epochs
    wall = fastest[0] / best_bare.wall
    help_s = command_seconds([sys.executable, "-m", "tuner", "--help"])
    ratio = tracked[0] / fastest[0]
    print("\ntargets (issue 19, overhead), each judged on the figure named first:")
    print(
        f"  tuner / bare <= {limit:.2f} (1.10 for trials under 100 epochs, 1.02 from 100; a trial took "
        f"{per_trial:.2f} s here): paired {paired_ratio:.3f} {verdict(paired_ratio <= limit)} "
        f"(sides timed one after the other: {wall:.3f})"
    )
    print(f"  tracked / untracked <= 1.05: {ratio:.3f} ({tracked[0]:.2f} s) {verdict(ratio <= 1.05)}")
    result, report = min(reports, key=lambda r: r[1])
    print(
        f"  the report < 1.5 s, written in a new process as `tuner study` writes it, its imports included: "
        f"{report:.2f} s {verdict(report < 1.5)} (the result printed after {result:.2f} s; "
        f"{fastest[2].total('outputs'):.2f} s in-process above)"
    )
    print(f"  python -m tuner --help < 0.3 s (best of 3, a new process): {help_s:.2f} s {verdict(help_s < 0.3)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
