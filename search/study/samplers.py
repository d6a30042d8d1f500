"""Sampler registry: the keys of ``SAMPLERS`` are the names a study file may use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from search.store import PerTrial
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

# Samplers that learn from finished trials only (TPE: complete and pruned): each trial's questions may
# share one read. GP and CMA-ES read running trials too, or every trial: they read the study themselves.
SNAPSHOT_SAMPLERS = ("tpe",)


class OneReadPerTrialSampler(optuna.samplers.BaseSampler):
    """``sampler``, asked about a trial with the study's finished trials read once for that trial
    (``PerTrial``): Optuna's samplers read the study for every parameter, and its storage reads
    every trial whole, running ones too. What they learn from is the same: the finished trials
    when the trial started (TPE with ``constant_liar``, which also reads running ones, still
    reads the study itself)."""

    def __init__(self, sampler: optuna.samplers.BaseSampler) -> None:
        self.sampler = sampler
        self._reads = PerTrial()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        return self.sampler.infer_relative_search_space(self._reads.view(study, trial.number), trial)

    def sample_relative(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        return self.sampler.sample_relative(self._reads.view(study, trial.number), trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        view = self._reads.view(study, trial.number)
        return self.sampler.sample_independent(view, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.sampler.before_trial(self._reads.view(study, trial.number), trial)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any, values: Any) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


def build_sampler(component: Component, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    """The named sampler, seeded with the study's seed (and the worker's, so workers differ), one
    read of the study per trial where it learns from finished trials (``OneReadPerTrialSampler``)."""
    options: dict[str, Any] = component.options
    try:
        sampler = SAMPLERS[component.name](seed, space, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"sampler '{component.name}' with options {options}: {error}") from None
    return OneReadPerTrialSampler(sampler) if component.name in SNAPSHOT_SAMPLERS else sampler
