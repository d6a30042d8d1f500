"""The search space in Optuna's terms: its distributions, a trial's sample of them, the grid
sampler's grid, and whether a study's earlier trials can take an edited space."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)

from search.study.space import Distribution, SearchSpace
from training import ConfigError


def to_optuna(dist: Distribution) -> BaseDistribution:
    """The Optuna distribution a study file's ``dist`` is sampled from (and recorded as)."""
    if dist.choices is not None:
        return CategoricalDistribution(dist.choices)
    if dist.integer:
        return IntDistribution(int(dist.low), int(dist.high), step=int(dist.step or 1), log=dist.log)
    return FloatDistribution(dist.low, dist.high, step=dist.step, log=dist.log)


def suggest(trial: optuna.Trial, name: str, dist: Distribution) -> Any:
    d = to_optuna(dist)
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(name, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)


def sample(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Ask the trial for every parameter of ``space``, by column; a choice's branch fields only for
    the branch it chose."""
    params: dict[str, Any] = {}
    for param in space.params():
        params[param.name] = suggest(trial, param.name, param.distribution)
        for branch in param.branches.get(params[param.name], ()):
            params[branch.name] = suggest(trial, branch.name, branch.distribution)
    return params


def space_distributions(space: SearchSpace) -> list[tuple[str, BaseDistribution]]:
    """Every parameter ``sample`` can ask for, with its distribution (a branch field may appear in
    several branches)."""
    return [(param.name, to_optuna(param.distribution)) for param in space.every_param()]


def grid_space(space: SearchSpace) -> dict[str, list[Any]]:
    """The grid sampler's space: every parameter must be given as choices."""
    grid: dict[str, list[Any]] = {}
    for param in space.every_param():
        if param.distribution.choices is None:
            raise ValueError(f"the grid sampler needs choices for '{param.name}', not a range")
        grid[param.name] = list(param.distribution.choices)
    return grid


def recorded_distributions(storage: optuna.storages.BaseStorage, study_name: str) -> dict[str, BaseDistribution]:
    """What the study's trials sampled each parameter from (the latest trial's, where they differ);
    nothing for a study that does not exist yet."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return {}
    recorded: dict[str, BaseDistribution] = {}
    for trial in storage.get_all_trials(study_id, deepcopy=False):
        recorded |= trial.distributions
    return recorded


def fit_space(study_name: str, recorded: dict[str, BaseDistribution], space: SearchSpace) -> SearchSpace:
    """``space`` as the study's earlier trials (``recorded``) can take it, checked before a trial
    starts. A parameter whose kind (float, integer, choices), log scale or choices changed is
    refused: Optuna would fail the next trial that samples it, with a traceback. New ranges are
    fine, and so are the same choices in another order, which are put back in the order the trials
    recorded (Optuna counts a reordered list as another distribution)."""
    orders: dict[str, list[Any]] = {}
    for name, new in space_distributions(space):
        old = recorded.get(name)
        if old is None:
            continue
        if _same_choices_reordered(old, new):
            orders[name] = list(old.choices)
            continue
        try:
            check_distribution_compatibility(old, new)
        except ValueError:
            raise ConfigError(
                f"study '{study_name}' has trials that sampled '{name}' from {_describe(old)}; the study "
                f"file now gives {_describe(new)}, which one Optuna study cannot mix with them. Keep '{name}' as it "
                "was, or run the changed space as a new study (--set name=NEW_NAME)"
            ) from None
    return space.reordered(orders) if orders else space


def _same_choices_reordered(old: BaseDistribution, new: BaseDistribution) -> bool:
    if not (isinstance(old, CategoricalDistribution) and isinstance(new, CategoricalDistribution)):
        return False
    return old.choices != new.choices and sorted(map(repr, old.choices)) == sorted(map(repr, new.choices))


def _describe(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return f"choices {list(dist.choices)}"
    kind = "integers" if isinstance(dist, IntDistribution) else "floats"
    return f"{kind} {dist.low:g}..{dist.high:g}{' (log scale)' if dist.log else ''}"
