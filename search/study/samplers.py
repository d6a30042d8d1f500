"""Sampler registry: the keys of ``SAMPLERS`` are the names a study file may use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from search.study.distributions import grid_space
from search.study.schema import Component
from search.study.space import SearchSpace
from training import ConfigError

SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed, space, **o: optuna.samplers.TPESampler(seed=seed, **o),
    "random": lambda seed, space, **o: optuna.samplers.RandomSampler(seed=seed, **o),
    "gp": lambda seed, space, **o: optuna.samplers.GPSampler(seed=seed, **o),
    "cmaes": lambda seed, space, **o: optuna.samplers.CmaEsSampler(seed=seed, **o),
    "grid": lambda seed, space, **o: optuna.samplers.GridSampler(grid_space(space), seed=seed, **o),
}


def build_sampler(component: Component, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    """The named sampler, seeded with the study's seed (and the worker's, so workers differ)."""
    options: dict[str, Any] = component.options
    try:
        return SAMPLERS[component.name](seed, space, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"sampler '{component.name}' with options {options}: {error}") from None
