"""What one output folder holds: the whole experiment, whichever command wrote it last.

``tuner study`` (with any subset of the experiment's optimizers) and ``tuner plot``
both rewrite the folder from every study of the experiment in the storage: the
summary, the figures, ``best-<space>.yaml`` per study with a best trial and
``best.yaml`` (the winner of the summary), the studies always in the order they
were created (so an optimizer keeps its row and colour). So ``best.yaml``,
``summary.md`` and ``plots/`` always describe the same studies and crown the
same optimizer.

``tuner study`` leaves the folder untouched when nothing changed since it was written (:mod:`tuner.run.stamp`);
``tuner plot`` always rewrites it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from tuner.config import export, strict_yaml
from tuner.config.experiment import Config
from tuner.report import statistics as analysis
from tuner.report.build import build_report, load_studies, with_importances
from tuner.report.data import Report
from tuner.report.importance import sample
from tuner.report.write import drawing_figures, report_paths, write_texts
from tuner.run import stamp


@dataclass(frozen=True)
class Outputs:
    """What :func:`write_outputs` wrote: the report, the summary and evidence as printed, and the best-config files by
    space name (the winner's also as ``best.yaml``); ``redrawn``: False when the folder was up to date and left as it
    was; ``removed``: the files tuner wrote there before that these studies no longer make (a study of another
    storage's best config), removed so that the folder does not contradict its summary."""

    report: Report
    summary: str
    evidence: str
    report_files: list[Path]
    configs: dict[str, Path]
    best: Path | None
    redrawn: bool = True
    removed: tuple[str, ...] = ()

    def removed_note(self) -> str:
        """What the files line adds when files were removed (``; removed, ...: best-sgd.yaml``); else nothing."""
        return f"; removed, of studies no longer reported here: {', '.join(self.removed)}" if self.removed else ""


def write_outputs(
    storage: optuna.storages.BaseStorage,
    experiment: str,
    out: Path,
    *,
    target: float | None = None,
    importance: str = "ped-anova",
    source: dict[str, Any] | None = None,
    run_ids: Callable[[], dict[str, dict[int, str]]] | None = None,
    where: str = "--experiment",
    only_if_changed: bool = False,
    before_figures: Callable[[Outputs], None] | None = None,
) -> Outputs:
    """Rewrite ``out`` from every study of ``experiment`` in ``storage``, in the order they were created
    (see the module's docstring).

    ``target`` and ``importance``: as :func:`tuner.report.build.build_report` takes them. ``source``: the ``source``
    section of the best-config files; ``run_ids()``: study name -> trial number -> MLflow run id, known to a
    tracked ``tuner study``, asked for once the figures are drawn (the MLflow follower catches up meanwhile).
    ``only_if_changed``: leave ``out`` as it is when its stamp says it was made from the same studies, trials and
    arguments and none of its files is missing. ``before_figures(outputs)``: called once the summary, the evidence
    and the best configs are written, before the figures are drawn (``tuner study`` prints its result there).
    Raises :class:`~tuner.errors.UserError` (naming ``where``) when the experiment has no study there.
    """
    studies = load_studies(storage, experiment, None, where)
    # The importances, which only importance.png shows, are computed where it is drawn (beside the other figures,
    # after the result is printed): from the studies' samples, read here.
    built = build_report(studies, target=target, evaluator=importance, importances=False)
    samples = [sample(study) for study in studies]
    made = stamp.made_from(studies, {"target": target, "importance": importance, "source": source})
    paths = report_paths(out)
    if only_if_changed and stamp.up_to_date(out, made):
        configs = {o.name: out / f"best-{o.name}.yaml" for o in built.optimizers if o.summary.best_trial is not None}
        best = out / "best.yaml" if built.winner is not None else None
        kept = Outputs(built, paths[0].read_text()[:-1], paths[1].read_text()[:-1], paths, configs, best, False)
        if before_figures is not None:
            before_figures(kept)
        return kept
    before = stamp.files(out)
    stamp.clear(out)
    # The summary links the config files that exist: they are written first, and again with their MLflow run ids
    # once the figures are drawn (the follower catches up meanwhile). The figures' child starts first, before the
    # texts and the result, which do not wait for it.
    with drawing_figures(built, out, functools.partial(with_importances, built, samples, importance)):
        configs, best = _write_configs(studies, built, out, source, {})
        texts = write_texts(built, out)
        done = Outputs(built, texts[0].read_text()[:-1], texts[1].read_text()[:-1], paths, configs, best)
        if before_figures is not None:
            before_figures(done)
    if run_ids is not None:
        configs, best = _write_configs(studies, built, out, source, run_ids())
        done = dataclasses.replace(done, configs=configs, best=best)
    written = [*paths, *configs.values(), *([best] if best else [])]
    stale = sorted(set(before) - {str(path.relative_to(out)) for path in written})
    for name in stale:
        (out / name).unlink(missing_ok=True)
    stamp.write(out, made, written)
    return dataclasses.replace(done, removed=tuple(stale))


def _write_configs(
    studies: list[optuna.Study],
    built: Report,
    out: Path,
    source: dict[str, Any] | None,
    run_ids: dict[str, dict[int, str]],
) -> tuple[dict[str, Path], Path | None]:
    """``best-<space>.yaml`` for each study with a best trial and ``best.yaml`` for the winner (removed when there is
    none); the files by space name, and best.yaml's path."""
    configs: dict[str, Path] = {}
    best = None
    for study, entry in zip(studies, built.optimizers):
        summary = entry.summary
        if summary.best_trial is None:
            continue
        found = dict(source or {})
        run_id = run_ids.get(study.study_name, {}).get(summary.best_trial)
        if run_id:
            found["mlflow_run_id"] = run_id
        path = out / f"best-{entry.name}.yaml"
        config = analysis.best_config(summary, study, built.label, built.direction, found)
        config = _keep_source(config, path)
        configs[entry.name] = export.write_config(config, path)
        if entry.name == built.winner:
            best = export.write_config(config, out / "best.yaml")
    if best is None:  # no winner now: a best.yaml left from before would contradict the summary
        (out / "best.yaml").unlink(missing_ok=True)
    return configs, best


def _keep_source(config: Config, path: Path) -> Config:
    """``config`` with the ``source`` fields it lacks taken from the file at ``path`` when that file is of the
    same study and trial: ``tuner plot`` and a resumed study that mirrored nothing new know no MLflow run id. A run id
    of another tracking store is not kept."""
    try:
        old = (strict_yaml.load(path.read_text()) or {}).get("source") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return config
    new = config.source
    if not isinstance(old, dict) or any(old.get(key) != new.get(key) for key in ("study", "trial")):
        return config
    kept = {key: value for key, value in old.items() if key not in new}
    if new.get("tracking_uri", old.get("tracking_uri")) != old.get("tracking_uri"):
        kept.pop("mlflow_run_id", None)
    return dataclasses.replace(config, source=new | kept)
