"""The fields of the training settings a study can search, named by their dotted paths, and the
columns a trial records their sampled values under (the stable names existing studies use, else
the path itself). The one translation between the two: ``column`` (path to column), made once per
parameter when a space is walked, and ``apply`` (column to path), once per trial's config."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from training import LOSS_PARAMS, SCHEDULER_PARAMS, LossConfig, ModelConfig, SchedulerConfig, TrainSettings

# The fields whose columns keep the names studies have always had, by path.
STABLE_NAMES: dict[str, str] = {
    "train.optimizer.lr": "lr",
    "train.optimizer.weight_decay": "weight_decay",
    "train.accumulation_steps": "accumulation_steps",
    "train.scheduler": "scheduler",
    "train.loss": "loss",
    **{f"train.scheduler.{name}": name for name in SchedulerConfig.model_fields if name != "name"},
    **{f"train.loss.{name}": name for name in LossConfig.model_fields if name != "name"},
}
PATHS: dict[str, str] = {name: path for path, name in STABLE_NAMES.items()}  # column -> path
# Sampled first, in this order, as every study has been: the same seed then draws the same trials.
FIRST = (
    "train.optimizer.lr",
    "train.optimizer.weight_decay",
    "train.accumulation_steps",
    "train.scheduler",
    "train.loss",
)
# The branch fields of the settings chosen by a registered name; other sections allow all their fields.
BRANCH_FIELDS: dict[str, dict[str, set[str]]] = {"train.loss": LOSS_PARAMS, "train.scheduler": SCHEDULER_PARAMS}
# How and where a machine trains, not what: never searched (and free to differ between runs).
MACHINE_SETTINGS = (
    "train.device", "train.compile", "train.cuda_graphs", "train.eval_batch_size", "train.gpu_images_share",
    "model.weights",
)  # fmt: skip
ROOTS: dict[str, type[BaseModel]] = {"train": TrainSettings, "model": ModelConfig}


class SpaceError(ValueError):
    """What is wrong with the space's entry ``key``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def column(path: str) -> str:
    """The column a field's sampled value is recorded under."""
    return STABLE_NAMES.get(path, path)


def resolve(key: str) -> str:
    """The path a space key names (a stable name, or a path itself); ``SpaceError`` if it names none."""
    path = PATHS.get(key, key)
    root, _, rest = path.partition(".")
    if root == "data":
        raise SpaceError(key, "every trial of a study validates on the same data: data.* cannot be searched")
    if root not in ROOTS or not rest:
        raise SpaceError(
            key, "not a field of the training settings; give its path (train.optimizer.weight_decay, "
            f"model.drop_rate, ...) or one of {', '.join(column(first) for first in FIRST)}"
        )  # fmt: skip
    if path in MACHINE_SETTINGS:
        raise SpaceError(key, f"{path} is how a machine trains, not what: it cannot be searched")
    section_model(key, path)
    return path


def section_model(key: str, path: str) -> type | None:
    """The settings model a path names (a section), or None for a value; ``SpaceError`` if no field."""
    model: Any = ROOTS[path.split(".")[0]]
    parts = path.split(".")[1:]
    for depth, part in enumerate(parts):
        fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        if part not in fields:
            where = ".".join(path.split(".")[: depth + 1])
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f" (did you mean {where}.{close[0]}?)" if close else ""
            raise SpaceError(key, f"{where} has no field '{part}'{hint}")
        model = fields[part].annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def nested_fields(key: str, value: Any) -> bool:
    """Whether ``value`` under space key ``key`` holds fields of the section ``key`` names, each with
    its own entry (``model: {drop_rate: {...}}``, as ``--set space.model.drop_rate=...`` writes it),
    rather than branches by name (``loss: {focal: {...}}``): where each holds a distribution, in a
    section not chosen by name, or where every key is one of the section's fields."""
    if not (isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values())):
        return False
    if all(any(not isinstance(x, dict) for x in child.values()) for child in value.values()):
        return True  # each holds a distribution's bounds or choices, not a branch's fields
    path = PATHS.get(key, key)
    if path.split(".")[0] not in ROOTS:
        return False
    try:
        model = ROOTS.get(path) or section_model(key, path)
    except SpaceError:
        return False
    if model is None:
        return False
    return "name" not in model.model_fields or all(sub in model.model_fields for sub in value)


def put(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def apply(settings: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` (``{"train": ..., "model": ...}`` as plain data) with each sampled value, by its
    column, put in its field; a setting chosen by name gets the name."""
    for name, value in params.items():
        path = PATHS.get(name, name)
        if path.split(".")[0] not in ROOTS:
            continue  # not a field: a column another tool recorded
        parts = path.split(".")
        try:
            is_section = section_model(name, path) is not None
        except SpaceError:
            continue
        put(settings, [*parts, "name"] if is_section else parts, value)
    return settings
