"""Pruner registry: the keys of ``PRUNERS`` are the names a study file may use.

``patient`` wraps another pruner: ``{name: patient, patience: 2, wrapped: {name: median}}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from search.store import PerTrial
from training import registered

PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "patient": optuna.pruners.PatientPruner,
    "none": optuna.pruners.NopPruner,
}


# Pruners that compare a trial only with complete trials: each trial's checks may share one read.
SNAPSHOT_PRUNERS = ("median", "percentile")


class OneReadPerTrial(optuna.pruners.BasePruner):
    """``pruner``, given the study's finished trials as they were at the trial's first pruning
    check, for each later check of that trial (``PerTrial``). Optuna's pruners read the whole study
    at every check, and its storage reads every trial whole each time: with a thousand workers, a
    thousand running trials at each of the ten epochs of every trial. While fewer trials than
    ``needs`` (the pruner's start-up trials) are complete, each check reads again."""

    def __init__(self, pruner: optuna.pruners.BasePruner, needs: int) -> None:
        self.pruner = pruner
        self._reads = PerTrial(needs)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return self.pruner.prune(self._reads.view(study, trial.number), trial)


def build_pruner(component: Any) -> optuna.pruners.BasePruner:
    """The named pruner, one read of the study per trial where it compares with complete trials
    only (``OneReadPerTrial``), also inside ``patient``; a ValueError names the bad name or option."""
    options = dict(component.options)
    registered("pruner", component.name, PRUNERS)
    if component.name == "patient":
        wrapped = options.pop("wrapped", {"name": "none"})
        if not isinstance(wrapped, dict) or "name" not in wrapped:
            raise ValueError("pruner 'patient' needs wrapped: {name: ...}")
        inner = type(component).model_validate(wrapped)
        options["wrapped_pruner"] = None if inner.name == "none" else build_pruner(inner)
    try:
        pruner = PRUNERS[component.name](**options)
    except TypeError as error:
        raise ValueError(f"pruner '{component.name}': {error}") from None
    if component.name in SNAPSHOT_PRUNERS:  # their defaults: 5 start-up trials, 1 trial at least
        needs = max(int(options.get("n_startup_trials", 5)), int(options.get("n_min_trials", 1)))
        return OneReadPerTrial(pruner, needs)
    return pruner


def first_prunable_step(component: Any) -> int:
    """The first step at which the named pruner can stop a trial. Asking earlier only costs two
    reads of the study (Optuna's pruners read every trial before looking at the step)."""
    if component.name in ("median", "percentile"):
        return int(component.options.get("n_warmup_steps", 0))
    return 0
