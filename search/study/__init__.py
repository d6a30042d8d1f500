"""A study: its file as data (``schema``, ``space``), how it is read (``load``), what it samples in
Optuna's terms (``distributions``), the samplers and pruners it may name, and what it records of
its setup and inputs so that every later run trains what its first one did.

Importing the schema imports nothing that samples, prunes or trains: the loading names (which
check names against the samplers' and pruners' registries, and so import Optuna) are loaded on
first use."""

from __future__ import annotations

import importlib
from typing import Any

from search.study.schema import Budget, Component, Retention, StudySpec
from search.study.space import Distribution, Param, SearchSpace

_LOADING = ("STUDIES_DIR", "find_study_file", "load_study", "validate_study")

__all__ = ["Budget", "Component", "Distribution", "Param", "Retention", "SearchSpace", "StudySpec", *_LOADING]


def __getattr__(name: str) -> Any:
    if name in _LOADING:
        return getattr(importlib.import_module("search.study.load"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
