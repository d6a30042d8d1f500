"""Albumentations pipelines from config: a list of ``{name, **params}`` or albumentations' dict form."""

from __future__ import annotations

from typing import Any

import albumentations as A

from training.errors import ConfigError


def build_pipeline(spec: list[dict[str, Any]] | dict[str, Any], seed: int) -> A.Compose | None:
    """An albumentations ``Compose`` seeded with ``seed``, or None for an empty pipeline."""
    if isinstance(spec, dict):
        try:
            pipeline = A.from_dict(spec)
        except Exception as error:  # albumentations raises many types for a bad dict
            raise ConfigError(f"invalid albumentations pipeline {spec}: {error}") from None
        pipeline.set_random_seed(seed)
        return pipeline
    if not spec:
        return None
    return A.Compose([_transform(step) for step in spec], seed=seed)


def _transform(step: dict[str, Any]) -> A.BasicTransform:
    params = dict(step)
    name = params.pop("name", None)
    transform = getattr(A, str(name), None)
    if not isinstance(transform, type) or not issubclass(transform, A.BasicTransform):
        raise ConfigError(f"unknown albumentations transform '{name}' in {step}; use a class name from albumentations")
    try:
        return transform(**params)
    except Exception as error:
        raise ConfigError(f"invalid parameters for {name}: {params} ({error})") from None
