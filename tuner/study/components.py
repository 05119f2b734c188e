"""The sampler and the pruner of a study: built from the experiment's components, checked before any study exists."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import optuna

from tuner.config.checks import check_type
from tuner.config.experiment import Component, Experiment
from tuner.errors import UserError
from tuner.study.resume import Setup


def _build(where: str, cls: type, component: Component, **defaults: Any) -> Any:
    signature = inspect.signature(cls).parameters
    for key, value in component.kwargs.items():
        if key in signature:  # ``n_startup_trials: true`` would run with 1
            default = signature[key].default
            check_type(
                f"{where}: {component.name}.{key}", value, None if default is inspect.Parameter.empty else default
            )
    try:
        return cls(**(defaults | component.kwargs))
    except (TypeError, ValueError) as err:
        allowed = list(inspect.signature(cls).parameters)
        raise UserError(
            f"{where}: {component.name} {component.kwargs}: {err} (allowed arguments: {', '.join(allowed)})"
        ) from None


def make_sampler(component: Component, seed: int, where: str = "sampler") -> optuna.samplers.BaseSampler:
    """``tpe`` (multivariate, grouped: the schedule parameters are conditional; constant liar), ``random`` or
    ``qmc`` (scrambled), seeded by ``seed``, with the component's own arguments over these defaults.

    Raises :class:`UserError` naming ``where`` for an argument of the wrong type or one the class refuses.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if component.name == "tpe":
            return _build(
                where,
                optuna.samplers.TPESampler,
                component,
                seed=seed,
                multivariate=True,
                group=True,
                constant_liar=True,
            )
        if component.name == "random":
            return _build(where, optuna.samplers.RandomSampler, component, seed=seed)
        return _build(
            where, optuna.samplers.QMCSampler, component, seed=seed, scramble=True, warn_independent_sampling=False
        )


def make_pruner(component: Component, epochs: int, where: str = "pruner") -> optuna.pruners.BasePruner:
    """``median`` (by default after 5 complete trials and 1/4 of the ``epochs``), ``hyperband`` (by default from 1
    to ``epochs`` epochs, reduction factor 3) or ``none``, with the component's own arguments over these defaults.

    Raises :class:`UserError` naming ``where`` for an argument of the wrong type or one the class refuses.
    """
    if component.name == "median":
        return _build(
            where, optuna.pruners.MedianPruner, component, n_startup_trials=5, n_warmup_steps=max(1, epochs // 4)
        )
    if component.name == "hyperband":
        return _build(
            where, optuna.pruners.HyperbandPruner, component, min_resource=1, max_resource=epochs, reduction_factor=3
        )
    return _build(where, optuna.pruners.NopPruner, component)


def check_components(experiment: Experiment, setup: Setup) -> None:
    """Try the sampler and pruner on a throwaway study, so that a bad argument fails before any study exists.

    Raises :class:`UserError` naming the experiment's ``sampler`` or ``pruner`` for a ``seed`` argument (the
    experiment's seed seeds the sampler), or for any argument that fails once used.
    """
    if "seed" in experiment.sampler.kwargs:
        raise UserError(
            f"{experiment.at('sampler')}: 'seed' is not allowed here (the experiment's seed seeds the sampler)"
        )
    for name, sampler, pruner in (
        (
            "sampler",
            make_sampler(experiment.sampler, experiment.seed, experiment.at("sampler")),
            optuna.pruners.NopPruner(),
        ),
        (
            "pruner",
            optuna.samplers.RandomSampler(seed=0),
            make_pruner(experiment.pruner, setup.epochs, experiment.at("pruner")),
        ),
    ):
        component = experiment.sampler if name == "sampler" else experiment.pruner
        study = optuna.create_study(direction=setup.study_direction, sampler=sampler, pruner=pruner)
        try:
            for number in range(3):
                trial = study.ask()
                trial.suggest_float("x", 1e-3, 1.0, log=True)
                trial.suggest_categorical("c", ["a", "b"])
                for epoch in range(1, min(setup.epochs, 3) + 1):
                    trial.report(float(number + epoch), epoch)
                    trial.should_prune()
                study.tell(trial, float(number))
        except Exception as err:  # Optuna checks some arguments only when they are used
            raise UserError(
                f"{experiment.at(name)}: {component.name} {component.kwargs}: {type(err).__name__}: {err}"
            ) from None
