"""Sampling the search space into stable parameter names, and applying them to a training config.

Parameter names are database columns and dashboard axes, so they never change: ``lr``,
``scheduler``, ``loss``, ``accumulation_steps`` and, conditionally, the chosen scheduler's or
loss's own fields (``step_size``, ``step_gamma``, ``focal_gamma``, ``smoothing``, ...).
"""

from __future__ import annotations

from typing import Any

import optuna

from search.studyfile import Distribution, SearchSpace
from training.config import TrainConfig


def suggest(trial: optuna.Trial, name: str, dist: Distribution) -> Any:
    if dist.choices is not None:
        return trial.suggest_categorical(name, dist.choices)
    if dist.integer:
        return trial.suggest_int(name, int(dist.low), int(dist.high), step=int(dist.step or 1), log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


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
