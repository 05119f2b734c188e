"""Finding a task by name: the built-in tasks, installed plugins (entry points), dotted paths; ``tuner tasks``.

A task is named by a built-in name (``digits-mlp``, see :data:`BUILTIN`), the
name of an entry point in the group ``tuner.tasks`` of an installed package,
or a dotted path ``package.module:factory``, tried in that order; ``task_args``
from the experiment become the factory's keyword arguments.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from dataclasses import dataclass
from typing import Any

from tuner.config.checks import check_type, is_int, is_number
from tuner.errors import UserError, reason
from tuner.tasks.task import FIELDS, LOOP_FIELDS, Task, is_loop

# The built-in tasks: name -> module:factory.
BUILTIN: dict[str, str] = {
    "digits-mlp": "tuner.tasks.digits:DigitsMLP",
    "digits-cnn": "tuner.tasks.digits_cnn:DigitsCNN",
    "lstm-adding": "tuner.tasks.lstm_adding:LSTMAdding",
    "tiny-transformer": "tuner.tasks.tiny_transformer:TinyTransformer",
    "quadratic-deep": "tuner.tasks.quadratic:QuadraticDeep",
    "rosenbrock": "tuner.tasks.rosenbrock:Rosenbrock",
    "bag-of-words": "tuner.tasks.bag_of_words:BagOfWordsTask",
    "drifting-regression": "tuner.tasks.drifting:DriftingRegression",
    "logistic-regression": "tuner.tasks.logistic:LogisticRegression",
}

# Installed packages offer tasks as entry points of this group (name = "module:factory").
ENTRY_POINT_GROUP = "tuner.tasks"


def plugins() -> dict[str, importlib.metadata.EntryPoint]:
    """The tasks of installed packages: entry points of the group ``tuner.tasks``, by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _package(ep: importlib.metadata.EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "an installed package"


def _factory(spec: str, where: str) -> Any:
    """The task factory named ``spec``: a built-in name first, then an installed entry point, then
    ``package.module:factory``. Raises :class:`UserError` naming ``where`` when there is none."""
    installed = plugins()
    if spec in BUILTIN:
        path, label = BUILTIN[spec], repr(spec)
    elif spec in installed:
        ep = installed[spec]
        path = f"{ep.module}:{ep.attr}"
        label = f"{spec!r} (entry point {path} of {_package(ep)})"
    else:
        path, label = spec, repr(spec)
    if ":" not in path:
        allowed = ", ".join([*BUILTIN, *installed])
        raise UserError(
            f"{where}: {spec!r} is not a task (allowed: {allowed}, or a dotted path package.module:factory)"
        )
    module_name, _, attribute = path.partition(":")
    try:
        factory: Any = importlib.import_module(module_name)
    except Exception as err:  # a plugin's import can fail in any way
        top = module_name.split(".")[0]
        # The module's own package is not on the path (not one of its imports): say where Python looks.
        hint = (
            f" (allowed: a module Python can import from here: run from the folder that holds {top!r}, "
            "or add that folder to PYTHONPATH)"
            if isinstance(err, ModuleNotFoundError) and err.name == top
            else ""
        )
        raise UserError(f"{where}: {label}: cannot import module {module_name!r}: {reason(err)}{hint}") from None
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise UserError(
                f"{where}: {label}: module {module_name!r} has no attribute {attribute!r} (allowed: a callable task "
                "factory)"
            )
        factory = getattr(factory, part)
    if not callable(factory):
        raise UserError(
            f"{where}: {label}: {attribute!r} is a {type(factory).__name__}, not callable (allowed: a callable task "
            "factory)"
        )
    return factory


def load_task(spec: str, args: dict[str, Any] | None = None, where: str = "task") -> Task:
    """The task named ``spec``, built with ``args``; a clear :class:`UserError` naming ``where`` when it cannot be.

    ``spec`` is a built-in name (:data:`BUILTIN`), the name of an entry point
    in the group ``tuner.tasks``, or ``package.module:factory``, in that order.
    """
    factory = _factory(spec, where)
    args = args or {}
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        accepted = [
            p.name for p in signature.parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            for key in args:
                if key not in accepted:
                    raise UserError(
                        f"{where}: {spec!r}: task_args: unknown argument {key!r} (allowed: "
                        f"{', '.join(accepted) or 'none'})"
                    )
        for key, value in args.items():  # ``hidden: true`` or ``"1e-3"`` where the default is a number
            default = signature.parameters[key].default if key in signature.parameters else None
            if is_number(default) or isinstance(default, bool):
                check_type(f"{where}: {spec!r}: task_args.{key}", value, default)
    try:
        task = factory(**args)
    except Exception as err:  # a factory may reject its arguments in any way
        raise UserError(f"{where}: {spec!r}: the factory raised {reason(err)}") from None
    if not (isinstance(task, Task) or (is_loop(task) and all(hasattr(task, name) for name in LOOP_FIELDS))):
        missing = [name for name in (LOOP_FIELDS if is_loop(task) else FIELDS) if not hasattr(task, name)]
        raise UserError(
            f"{where}: {spec!r}: the factory returned {type(task).__name__}, which lacks {', '.join(missing)} "
            "(allowed: an object with the attributes of tuner.tasks.task.Task, or with fit(run) instead of data, "
            "model, loss and score: see tuner.train.loop)"
        )
    checks = {
        "name": (isinstance(task.name, str) and task.name != "", "a non-empty string"),
        "metric": (isinstance(task.metric, str) and task.metric != "", "a non-empty string"),
        "direction": (task.direction in ("minimize", "maximize"), "minimize, maximize"),
        "epochs": (is_int(task.epochs), "an integer >= 1"),
        "batch_size": (is_int(task.batch_size), "an integer >= 1"),
    }
    for key, (ok, allowed) in checks.items():
        if not ok:
            raise UserError(f"{where}: {spec!r}: {key} {getattr(task, key)!r} is not allowed ({allowed})")
    return task


@dataclass(frozen=True)
class TaskInfo:
    """A task for ``tuner tasks``: its name, where it comes from, and the first paragraph of its docstring."""

    name: str
    origin: str
    summary: str


def describe() -> list[TaskInfo]:
    """The built-in tasks, then those of installed plugins (a plugin that cannot load says why)."""
    infos = [TaskInfo(name, "built-in", _summary(name)) for name in BUILTIN]
    for name, ep in plugins().items():
        origin = f"plugin: {ep.value} of {_package(ep)}"
        summary = "unused: the built-in task of the same name comes first" if name in BUILTIN else _summary(name)
        infos.append(TaskInfo(name, origin, summary))
    return infos


def _summary(name: str) -> str:
    try:
        factory = _factory(name, "task")
    except UserError as err:
        return f"cannot be loaded: {err}"
    # The first paragraph, its wrapped lines joined: the first line alone can stop mid-sentence.
    return " ".join((inspect.getdoc(factory) or "").partition("\n\n")[0].split())


def task_title(spec: str, args: dict[str, Any]) -> str:
    """A stored task for people, as a report's heading names it: the task's ``name`` with its arguments as
    ``key=value`` (``augmented-digits (width=32)``), not its ``package.module:factory`` path; the path when the task
    cannot be built here (its package not installed)."""
    try:
        name = load_task(spec, args).name
    except UserError:
        name = spec
    return name + (f" ({', '.join(f'{key}={value}' for key, value in args.items())})" if args else "")
