"""Pruner registry: the keys of ``PRUNERS`` are the names a study file may use.

``patient`` wraps another pruner: ``{name: patient, patience: 2, wrapped: {name: median}}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from training import registered

PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "patient": optuna.pruners.PatientPruner,
    "none": optuna.pruners.NopPruner,
}


def build_pruner(component: Any) -> optuna.pruners.BasePruner:
    """The named pruner; a ValueError names the bad name or option."""
    options = dict(component.options)
    registered("pruner", component.name, PRUNERS)
    if component.name == "patient":
        wrapped = options.pop("wrapped", {"name": "none"})
        if not isinstance(wrapped, dict) or "name" not in wrapped:
            raise ValueError("pruner 'patient' needs wrapped: {name: ...}")
        inner = type(component).model_validate(wrapped)
        options["wrapped_pruner"] = None if inner.name == "none" else build_pruner(inner)
    try:
        return PRUNERS[component.name](**options)
    except TypeError as error:
        raise ValueError(f"pruner '{component.name}': {error}") from None


def first_prunable_step(component: Any) -> int:
    """The first step at which the named pruner can stop a trial. Asking earlier only costs two
    reads of the study (Optuna's pruners read every trial before looking at the step)."""
    if component.name in ("median", "percentile"):
        return int(component.options.get("n_warmup_steps", 0))
    return 0
