"""Sampling the search space into stable parameter names, and applying them to a training config.

Parameter names are database columns and dashboard axes, so they never change: ``lr``,
``scheduler``, ``loss``, ``accumulation_steps`` and, conditionally, the chosen scheduler's or
loss's own fields (``step_size``, ``step_gamma``, ``focal_gamma``, ``smoothing``, ...).
"""

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

from search.studyfile import Distribution, SearchSpace
from training.config import TrainConfig
from training.errors import ConfigError


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
    """Ask the trial for every parameter of ``space``; conditional ones only for the chosen branch."""
    params: dict[str, Any] = {"lr": suggest(trial, "lr", space.lr)}
    if space.weight_decay is not None:
        params["weight_decay"] = suggest(trial, "weight_decay", space.weight_decay)
    params["accumulation_steps"] = suggest(trial, "accumulation_steps", space.accumulation_steps)
    for kind, table in (("scheduler", space.scheduler), ("loss", space.loss)):
        chosen = trial.suggest_categorical(kind, list(table))
        params[kind] = chosen
        for field, dist in table[chosen].items():
            params[field] = suggest(trial, field, dist)
    return params


def space_distributions(space: SearchSpace) -> list[tuple[str, BaseDistribution]]:
    """Every parameter ``sample`` can ask for, with its distribution (a branch field may appear in
    several branches)."""
    named = [("lr", space.lr), ("weight_decay", space.weight_decay), ("accumulation_steps", space.accumulation_steps)]
    pairs = [(name, to_optuna(dist)) for name, dist in named if dist is not None]
    for kind, table in (("scheduler", space.scheduler), ("loss", space.loss)):
        pairs.append((kind, CategoricalDistribution(list(table))))
        pairs += [(field, to_optuna(dist)) for branch in table.values() for field, dist in branch.items()]
    return pairs


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
    return _reorder(space, orders) if orders else space


def _same_choices_reordered(old: BaseDistribution, new: BaseDistribution) -> bool:
    if not (isinstance(old, CategoricalDistribution) and isinstance(new, CategoricalDistribution)):
        return False
    return old.choices != new.choices and sorted(map(repr, old.choices)) == sorted(map(repr, new.choices))


def _reorder(space: SearchSpace, orders: dict[str, list[Any]]) -> SearchSpace:
    """``space`` with the choices of the parameters in ``orders`` listed in that order."""

    def fit(name: str, dist: Distribution) -> Distribution:
        return dist.model_copy(update={"choices": orders[name]}) if name in orders else dist

    update: dict[str, Any] = {
        name: fit(name, getattr(space, name))
        for name in ("lr", "weight_decay", "accumulation_steps")
        if getattr(space, name) is not None
    }
    for kind in ("scheduler", "loss"):
        table = getattr(space, kind)
        branches = orders.get(kind, list(table))
        update[kind] = {branch: {f: fit(f, d) for f, d in table[branch].items()} for branch in branches}
    return space.model_copy(update=update)


def _describe(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return f"choices {list(dist.choices)}"
    kind = "integers" if isinstance(dist, IntDistribution) else "floats"
    return f"{kind} {dist.low:g}..{dist.high:g}{' (log scale)' if dist.log else ''}"


def apply_params(config: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The config with sampled ``params`` (as named by ``sample``) put in their places."""
    scheduler_fields = set(type(config.scheduler).model_fields) - {"name"}
    loss_fields = set(type(config.loss).model_fields) - {"name"}
    scheduler = {k: v for k, v in params.items() if k in scheduler_fields}
    loss = {k: v for k, v in params.items() if k in loss_fields}
    optimizer = {k: params[k] for k in ("lr", "weight_decay") if k in params}
    data = config.model_dump()
    data["scheduler"] |= scheduler | ({"name": params["scheduler"]} if "scheduler" in params else {})
    data["loss"] |= loss | ({"name": params["loss"]} if "loss" in params else {})
    data["optimizer"] |= optimizer
    if "accumulation_steps" in params:
        data["accumulation_steps"] = int(params["accumulation_steps"])
    return TrainConfig.model_validate(data)


def grid_space(space: SearchSpace) -> dict[str, list[Any]]:
    """The grid sampler's space: every parameter must be given as choices."""
    grid: dict[str, list[Any]] = {}
    for name in ("lr", "weight_decay", "accumulation_steps"):
        dist = getattr(space, name)
        if dist is not None:
            grid[name] = _choices(name, dist)
    for kind, table in (("scheduler", space.scheduler), ("loss", space.loss)):
        grid[kind] = list(table)
        for params in table.values():
            for field, dist in params.items():
                grid[field] = _choices(field, dist)
    return grid


def _choices(name: str, dist: Distribution) -> list[Any]:
    if dist.choices is None:
        raise ValueError(f"the grid sampler needs choices for '{name}', not a range")
    return list(dist.choices)
