"""What a study records of itself, as study user attributes: the spec it was made with (a later run
with another setup is refused, since its trials would not compare, and the commands describe a study
by it), its queued known-good configurations and its warm start."""

from __future__ import annotations

import json
from typing import Any

from search.study.fields import MACHINE_SETTINGS
from search.study.schema import StudySpec
from training import DEFAULT_OBJECTIVE

SPEC_ATTR = "spec"  # the study user attribute holding the spec it was made with, as JSON
WARM_START_ATTR = "warm_start"  # the other study and its trials queued first, recorded once they are
QUEUED_ATTR = "queued"  # the known-good configurations (enqueue) queued so far, each once in the study's life

# What may differ between runs of one study without making their trials incomparable: the study's
# bookkeeping (the space has its own check, `fit_space`), where a machine keeps its files, and how
# it trains. Everything else in a study file, but the fields the space samples, decides what a
# trial's value means.
_RUN_ONLY = (
    "name", "budget", "checkpoints", "enqueue", "warm_start", "space", "sampler", "pruner", "fold_pruning", "confirm",
    "data.root", "data.cache_dir", "data.decode_threads", *MACHINE_SETTINGS,
)  # fmt: skip
# Settings a spec recorded before they existed leaves out, with what its study trained by then
# (``objective``: since 0.2; ``data.folds``, ``data.keep_damaged``: since 0.3; where a study made
# before trained on a damaged image, the inputs check finds its images changed). Read for every
# 0.x study until 1.0 (docs/design.md).
ADDED_SINCE: dict[str, Any] = {"objective": DEFAULT_OBJECTIVE, "data.folds": 1, "data.keep_damaged": False}


def recorded_spec(spec: StudySpec) -> str:
    """The spec as the study records it."""
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True)


def changed_setup(recorded: dict[str, Any], spec: StudySpec) -> list[tuple[str, Any, Any]]:
    """What this run trains differently from the spec the study recorded when it was made, as
    ``(key, then, now)``: the model, the data, the epochs, the fixed training settings, the seed.
    The fields the space samples are left out (a trial's own value wins). A key the recorded spec
    does not have (recorded by an earlier 0.x) compares as ``ADDED_SINCE`` says, else not at all."""
    skipped = (*_RUN_ONLY, *spec.space.sampled_paths())
    changes, then = [], {**ADDED_SINCE, **_flat(recorded)}
    for key, value in _flat(spec.model_dump(mode="json")).items():
        before = then.get(key, value)
        if before != value and not any(key == k or key.startswith(f"{k}.") for k in skipped):
            changes.append((key, before, value))
    return changes


def as_new_study(name: str) -> str:
    """How a run that study ``name`` refuses may go on instead, as the refusals end."""
    return f"as a new study (--set name=NEW_NAME), or delete this one first (search delete --study {name})"


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def setup_text(spec_json: str | None, data: str | None = None) -> str | None:
    """What a study trains (model, data, epochs), from the spec it recorded when it was made, with
    what a run found in its data (``inputs.data_summary``), where one has."""
    try:
        spec = json.loads(spec_json)
        data_section, train = spec["data"], spec["train"]
        height, width = data_section["image_size"]
        return (
            f"{spec['model']['name']}, {data_section['source']} data{f' ({data})' if data else ''} at "
            f"{height}x{width}, {train['epochs']} epoch{'s' if train['epochs'] != 1 else ''} of batch "
            f"{train['batch_size']}"
        )
    except (TypeError, ValueError, KeyError):  # none recorded (made by plain Optuna), or in another form
        return None


def objective(attrs: dict[str, Any]) -> str:
    """The metric a study ranks its trials by, from the spec it recorded (``attrs``: its user
    attributes); the default for a study made before the setting, or by plain Optuna."""
    try:
        return json.loads(attrs[SPEC_ATTR]).get("objective", ADDED_SINCE["objective"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return ADDED_SINCE["objective"]
