"""A study: its file as data (``schema``, ``space``), how it is read (``load``), what it samples in
Optuna's terms (``distributions``), the samplers and pruners it may name, and what it records of
its setup and inputs so that every later run trains what its first one did."""

from search.study.load import STUDIES_DIR, find_study_file, load_study, validate_study
from search.study.schema import Budget, Component, Retention, Study
from search.study.space import Distribution, Param, SearchSpace

__all__ = [
    "STUDIES_DIR",
    "Budget",
    "Component",
    "Distribution",
    "Param",
    "Retention",
    "SearchSpace",
    "Study",
    "find_study_file",
    "load_study",
    "validate_study",
]
