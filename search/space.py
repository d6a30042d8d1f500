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


def check_space(study: optuna.Study, space: SearchSpace) -> None:
    """Refuse, before a trial starts, a space that Optuna cannot mix with the study's earlier trials:
    a parameter whose kind (float, integer, choices), log scale or choices changed. (New ranges are
    fine.) Optuna would otherwise fail the next trial that samples it, with a traceback."""
    recorded: dict[str, BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        recorded |= trial.distributions  # the latest trial's, where they differ
    for name, new in space_distributions(space):
        old = recorded.get(name)
        if old is None:
            continue
        try:
            check_distribution_compatibility(old, new)
        except ValueError:
            raise ConfigError(
                f"study '{study.study_name}' has trials that sampled '{name}' from {_describe(old)}; the study "
                f"file now gives {_describe(new)}, which one Optuna study cannot mix with them. Keep '{name}' as it "
                "was, or run the changed space as a new study (--set name=NEW_NAME)"
            ) from None


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
