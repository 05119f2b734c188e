"""How much slower is ``tuner study`` than the same trainings as a bare PyTorch loop?

One run of this script does, on a fresh SQLite storage in a temporary folder:

1. **tuner**: ``tuner.cli.main(["study", EXPERIMENT, ...])`` in-process, timed as
   a whole (task data loading, every trial, the final evaluation, the exported
   YAML). Before the clock starts, an untimed 1-trial, 1-epoch ``tuner study``
   does the one-off imports (torch's first ``optimizer.step()`` pulls in
   torch._dynamo and sympy; Optuna's storage pulls in SQLAlchemy and Alembic),
   so one-off import time counts on neither side; its time is printed apart.
2. **bare**: every trial of every study is read back from the storage and the
   same config (``trial.user_attrs["config"]``) is trained again, for the epochs
   that trial actually ran (``len(trial.intermediate_values)``: fewer for a pruned
   or diverged trial), by a hand-written loop: seed, ``task.model()``,
   ``torch.optim.<class>(**kwargs)``, the same LR schedule (stepped per optimizer
   step), a ``torch.randperm`` shuffle per epoch, and a validation loss and metric
   per epoch under ``torch.no_grad()``; no Optuna, no storage. The final
   evaluation (each study's best config re-trained on the final seeds, with a
   test evaluation) is re-run too, so both sides do the same training work.

It prints both wall-clock times, their ratio (tuner / bare; the target is
<= 1.05) and the same for process CPU time (less affected by other processes), the
number of trainings and torch's CPU thread count, and checks that the bare loop
reproduced the tuner's validation objectives (they match exactly on CPU).
With ``--repeat N`` both sides run N times, alternating, and the fastest of each
is kept. On a busy machine use ``--threads 1``: torch's intra-op threads slow
down many times over when another process holds a core.

Reading the result: what ``tuner study`` adds is a fixed cost per epoch (Optuna's
``trial.report`` and ``trial.should_prune``, each a round trip to the SQLite
storage) and per trial (sampling, ask, tell), whatever the model. It weighs
most on tasks whose epochs are short, such as ``quickstart`` (about 12 ms per
epoch on one CPU thread); ``--epochs``/``--trials`` change the mix.

Run from the repository root::

    make bench                                   # python bench/overhead.py $(ARGS)
    make bench ARGS="--trials 10 --epochs 5"
    .venv/bin/python bench/overhead.py --help
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import tempfile
import time
from dataclasses import dataclass

import optuna
import torch

import tuner.cli
from tuner import config as tuner_config
from tuner.config import Config
from tuner.export import config_from_dict
from tuner.optim import build_scheduler
from tuner.tasks import Data, Task, load_task


@dataclass(frozen=True)
class Run:
    """One training the tuner did: a config, a seed, the epochs it ran and its last validation objective."""

    config: Config
    seed: int
    epochs: int
    test: bool
    objective: float


def time_tuner(args: argparse.Namespace, folder: str, budget: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one in-process ``tuner study`` into ``folder``/bench.db."""
    argv = ["study", args.experiment, "--storage", f"sqlite:///{folder}/bench.db", "--out", folder,
            "--no-progress", "--device", args.device, *budget]
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        start, cpu = time.perf_counter(), time.process_time()
        code = tuner.cli.main(argv)
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
                runs.append(Run(cfg, cfg.seed, len(values), False, values[max(values)]))
        final = study.user_attrs.get("final")
        if final:
            cfg = config_from_dict(trials[final["trial"]].user_attrs["config"])
            for seed, history, objective in zip(final["seeds"], final["history"], final["val_objective"]):
                runs.append(Run(cfg, seed, len(history), True, objective))
    return runs


def train_bare(task: Task, data: Data, cfg: Config, seed: int, epochs: int, test: bool) -> float:
    """The loop a careful user would write by hand; returns the last validation objective."""
    device = data.train.x.device
    x, y, n, batch = data.train.x, data.train.y, len(data.train.x), cfg.batch_size
    torch.manual_seed(seed)
    model = task.model().to(device)
    optimizer = getattr(torch.optim, cfg.optimizer)(model.parameters(), **cfg.optimizer_kwargs)
    # The schedule spans the full run (cfg.epochs), even for a trial stopped early.
    scheduler = build_scheduler(cfg.schedule, cfg.schedule_params, optimizer, cfg.epochs * math.ceil(n / batch))
    order = torch.Generator(device=device).manual_seed(seed)
    val_loss = val_metric = math.nan
    for _ in range(epochs):
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
    if test:
        with torch.no_grad():
            output = model(data.test.x)
            task.loss(output, data.test.y).item(), task.score(output, data.test.y)
    return val_loss if cfg.objective == "loss" else val_metric


def time_bare(runs: list[Run], device: str) -> tuple[float, float, int]:
    """Wall and CPU seconds to load the task's data and redo ``runs`` by hand; how many results matched the tuner's."""
    start, cpu = time.perf_counter(), time.process_time()
    task = load_task(runs[0].config.task, runs[0].config.task_args)
    data = task.data().to(device)
    results = [train_bare(task, data, r.config, r.seed, r.epochs, r.test) for r in runs]
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    # A diverged trial stores NaN where the bare loop sees inf or NaN.
    matched = sum(a == r.objective or not (math.isfinite(a) or math.isfinite(r.objective)) for a, r in zip(results, runs))
    return seconds, cpu, matched


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Example: python bench/overhead.py --trials 10 --epochs 5 --repeat 3")
    parser.add_argument("--experiment", default="quickstart", help="shipped experiment name or YAML path (default: quickstart)")
    parser.add_argument("--trials", type=tuner.cli.positive_int, help="trials per optimizer (default: the experiment's)")
    parser.add_argument("--epochs", type=tuner.cli.positive_int, help="epochs per trial (default: the experiment's)")
    parser.add_argument("--repeat", type=tuner.cli.positive_int, default=1, help="runs of each side, alternating; the fastest is kept (default 1)")
    parser.add_argument("--threads", type=tuner.cli.positive_int, help="torch.set_num_threads(N) first (default: torch's own choice)")
    parser.add_argument("--device", default="cpu", help="device of both sides (default: cpu)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    experiment = tuner_config.load_experiment(tuner_config.find_experiment(args.experiment))
    budget = [*(["--trials", str(args.trials)] if args.trials else []), *(["--epochs", str(args.epochs)] if args.epochs else [])]
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as folder:
        warm_up, _ = time_tuner(args, folder, ["--trials", "1", "--epochs", "1", "--final-seeds", "1"])

    tuner_times, bare_times = [], []  # (wall, cpu) per repeat
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="tuner-bench-") as folder:
            tuner_times.append(time_tuner(args, folder, budget))
            runs = read_runs(f"sqlite:///{folder}/bench.db")
        *seconds, matched = time_bare(runs, args.device)
        bare_times.append(tuple(seconds))

    trials, finals, epochs = sum(not r.test for r in runs), sum(r.test for r in runs), sum(r.epochs for r in runs)
    print(f"experiment {experiment.name}: {trials} trials + {finals} final runs = {epochs} epochs; "
          f"bare results equal to tuner's: {matched}/{len(runs)}")
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}, optuna {optuna.__version__}; "
          f"untimed warm-up (one-off imports) {warm_up:.1f} s")
    print(f"{'':5} {'tuner s':>8} {'bare s':>8} {'ratio':>6} {'overhead':>8}")
    for k, label in enumerate(("wall", "cpu")):
        tuner_s, bare_s = min(t[k] for t in tuner_times), min(t[k] for t in bare_times)
        ratio = tuner_s / bare_s
        print(f"{label:5} {tuner_s:8.2f} {bare_s:8.2f} {ratio:6.3f} {100 * (ratio - 1):7.1f}%")
    if args.repeat > 1:
        print(f"wall s of each run: tuner {', '.join(f'{t[0]:.2f}' for t in tuner_times)}; bare {', '.join(f'{t[0]:.2f}' for t in bare_times)}")
    wall = min(t[0] for t in tuner_times) / min(t[0] for t in bare_times)
    print(f"target: tuner within 5% of the bare loop (wall ratio <= 1.05): {'met' if wall <= 1.05 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
