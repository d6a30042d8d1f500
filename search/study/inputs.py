"""What a study's trials are trained on, recorded with the study and checked by every later run.

The study file's own settings are checked by ``changed_setup``; its paths are not (``data.root``
and ``model.weights`` may differ by machine). What lies behind them is: the images, by a digest of
each file's place below the data folder, label and size (``content_digest``), and the weights
file, by its SHA-256. A study run again on relabelled or added images, or on other weights, would
mix trials that do not compare, and its pruner would judge new trials against the old ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from search.study.recorded import as_new_study
from training import ConfigError, DataConfig, DataFacts, ModelConfig

if TYPE_CHECKING:  # torch and timm: not for the commands that only read the study
    from training import PreparedData

INPUTS_ATTR = "inputs"
FACTS_ATTR = "data_facts"  # the data's facts (``DataFacts``) as its latest run found them


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def trained_inputs(prepared: PreparedData, data: DataConfig, model: ModelConfig) -> dict[str, Any]:
    """What a run trains on: its images (count, classes, digest) and its weights file's digest.

    The demo's images are written on each machine by that machine's OpenCV, whose PNG encoder may
    give the same pixels in files of other sizes; they are known by their files' places and labels
    (which its source, imbalance and seed decide, and the study's spec holds), not their sizes."""
    from training import content_digest

    decoded, sizes = prepared.decoded, data.source != "demo"
    return {
        "images": len(decoded.labels),
        "classes": len(decoded.class_names),
        "data": content_digest(decoded, sizes=sizes),
        "sizes": sizes,  # whether the digest counts the files' sizes
        "weights": file_sha256(model.weights) if model.weights is not None else None,
    }


def record_facts(study: optuna.Study, prepared: PreparedData) -> None:
    """The data's facts on the study, for ``search status``, ``search studies`` and the report; written
    where they are new (a study's first run, or items left out since), whether the images were
    decoded now or read from the cache; not where they differ only by where a machine mounts the data."""
    if not prepared.facts.same_as(data_facts(study.user_attrs)):  # the same but for the mount: kept as they are
        study.set_user_attr(FACTS_ATTR, prepared.facts.to_json())


def data_facts(attrs: Mapping[str, Any]) -> DataFacts | None:
    """The data's facts a study's user attributes hold, or None before a run recorded them."""
    return DataFacts.from_json(attrs.get(FACTS_ATTR))


def data_summary(attrs: Mapping[str, Any]) -> str | None:
    """What a study's runs found in its data, in a few words (``DataFacts.summary``); only the images'
    and classes' counts for a study whose runs recorded no facts; None before any run."""
    facts = data_facts(attrs)
    if facts is not None:
        return facts.summary()
    try:
        inputs = json.loads(attrs[INPUTS_ATTR])
        return f"{inputs['images']:,} images, {inputs['classes']} classes"
    except (TypeError, ValueError, KeyError):
        return None


def data_place(data: DataConfig) -> str:
    """Where a run's images are, as a message names it."""
    return f"data.root {data.root}" if data.root is not None else "the demo data"


def check_inputs(study: optuna.Study, inputs: dict[str, Any], where: str, *, record: bool = True) -> None:
    """Refuse (``ConfigError``) a run whose images or weights are not those the study was made on;
    ``record``: the first run of a study (or of a 0.1 study made before this check; kept until 1.0,
    docs/design.md) records its own.
    ``where``: the data's place, for the message. Two runs that record at once on different data:
    the one whose record did not stay refuses."""
    recorded = study.user_attrs.get(INPUTS_ATTR)
    then = json.loads(recorded) if recorded is not None else None
    if then is None:
        if not record:
            return
        study.set_user_attr(INPUTS_ATTR, json.dumps(inputs, sort_keys=True))
        then = json.loads(study.user_attrs[INPUTS_ATTR])  # read back: another run may have recorded at once
    name = study.study_name
    instead = f"run it {as_new_study(name)}"
    if then.get("data") != inputs["data"]:
        counts = f"{inputs['images']} images in {inputs['classes']} classes"
        same = then.get("images") == inputs["images"] and then.get("classes") == inputs["classes"]
        raise ConfigError(
            f"study '{name}' was trained on {then.get('images')} images in {then.get('classes')} classes; "
            f"{where} now holds {counts}{', but other files, labels or sizes' if same else ''}, and new trials "
            f"would not compare with the study's earlier ones. Put the images back, or {instead}"
        )
    if then.get("weights") != inputs["weights"]:
        raise ConfigError(
            f"study '{name}' was trained from the weights file {_short(then.get('weights'))}; this run's "
            f"model.weights is {_short(inputs['weights'])}, and new trials would not compare with the study's "
            f"earlier ones. Give the study's weights file again, or {instead}"
        )


def _short(digest: str | None) -> str:
    return f"of sha256 {digest[:12]}..." if digest else "none"
