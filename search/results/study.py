"""A study read for its results: its settings, trials and data, and tables (pandas) and pictures
of the data and the search."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import pandas as pd

from search.ranking import configurations, ranked
from search.record import TrialRecord, shown_as
from search.report import figures
from search.report.parts import is_competition
from search.store import AtomicArtifactStore, artifact_dir, load_existing, open_storage, resolve_storage_url
from search.study import StudySpec, validate_study
from search.study.inputs import data_facts
from search.study.recorded import SPEC_ATTR, objective
from training import PARTS, DataFacts, SearchServiceError

if TYPE_CHECKING:
    from training import PreparedData


class Picture:
    """A PNG that Jupyter shows (``_repr_png_``), drawn by one of the project's figure functions."""

    def __init__(self, draw: Callable[..., Any], *args: Any) -> None:
        buffer = io.BytesIO()
        draw(*args, buffer)  # each figure function's last argument is where its PNG goes
        self.png = buffer.getvalue()

    def _repr_png_(self) -> bytes:
        return self.png

    def save(self, path: str | Path) -> Path:
        Path(path).write_bytes(self.png)
        return Path(path)


@dataclass
class StudyResults:
    """One study, read: its settings, its trials, its data (decoded as its trials saw it)."""

    study: optuna.Study
    spec: StudySpec
    store: AtomicArtifactStore

    @property
    def objective(self) -> str:
        return objective(self.study.user_attrs)

    @property
    def label(self) -> str:
        """The objective as every output shows it ('macro-F1')."""
        return shown_as(self.objective)

    @property
    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    @cached_property
    def data(self) -> PreparedData:
        from training import prepare_data

        return prepare_data(self.spec.data, self.spec.seed)

    @property
    def facts(self) -> DataFacts:
        """The data's facts as the study's runs found them (or as found now, for a study without them)."""
        return data_facts(self.study.user_attrs) or self.data.facts

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.data.decoded.class_names

    def __repr__(self) -> str:
        counts = pd.Series([t.state.name.lower() for t in self.trials]).value_counts()
        states = ", ".join(f"{n} {state}" for state, n in counts.items()) or "no trials yet"
        return f"study '{self.study.study_name}': {states}; model {self.spec.model.name}; ranked by {self.label}"


def open_results(study: str, storage: str | None = None, artifacts: str | None = None) -> StudyResults:
    """The study ``study`` in ``storage`` (default: ``$SEARCH_STORAGE``, else the SQLite file in
    ``$SEARCH_HOME``), its checkpoints in ``artifacts``, as the commands find them."""
    found = load_existing(open_storage(resolve_storage_url(storage)), study)
    spec = validate_study(json.loads(found.user_attrs[SPEC_ATTR]), f"study '{study}'")
    return StudyResults(found, spec, AtomicArtifactStore(artifact_dir(artifacts)))


# -- the problem and the data ---------------------------------------------------------------------


def class_counts(results: StudyResults) -> pd.DataFrame:
    """Images per class on each side of the split, with each class's parts for the competition."""
    data, names = results.data, results.class_names
    labels = data.decoded.labels
    table = pd.DataFrame(
        {
            "train": np.bincount(labels[data.train_idx], minlength=len(names)),
            "validation": np.bincount(labels[data.val_idx], minlength=len(names)),
        },
        index=pd.Index(names, name="class"),
    )
    table["all"] = table["train"] + table["validation"]
    table["share"] = (table["all"] / table["all"].sum()).round(4)
    if is_competition(names):
        for k, part in enumerate(PARTS):
            table.insert(k, part, [name.split("/")[k] for name in names])
    return table


def part_counts(results: StudyResults) -> pd.DataFrame:
    """Images of each value of each part of the label (mask, gender, age band), both sides of the split."""
    table = class_counts(results)
    if not is_competition(results.class_names):
        raise SearchServiceError("the classes are not the competition's 18 (mask × gender × age): no parts")
    return pd.concat({part: table.groupby(part, sort=False)[["train", "validation", "all"]].sum() for part in PARTS})


def people(results: StudyResults) -> pd.DataFrame:
    """How many people each side of the split has (a person's images stay on one side)."""
    facts = results.facts
    if facts.people is None:
        return pd.DataFrame({"people": ["each image stands alone"]}, index=["all"])
    return pd.DataFrame({"people": [facts.train_people, facts.val_people, facts.people]},
                        index=["train", "validation", "all"])  # fmt: skip


def left_out(results: StudyResults) -> pd.DataFrame:
    """What the listing and the decode left out, an item a row: its kind, why, and its path within
    the data's folder (the first few of each kind; a last row counts the rest)."""
    facts, rows = results.facts, []
    for kind in facts.left_out:
        rows += [(kind.kind, kind.why, _within(path, facts.source)) for path in kind.first]
        if kind.count > len(kind.first):
            rows.append((kind.kind, kind.why, f"and {kind.count - len(kind.first)} more"))
    return pd.DataFrame(rows, columns=["left out", "why", f"path in {facts.source}"])


def _within(path: str, folder: str) -> str:
    inside = os.path.commonpath([path, folder]) == folder if os.path.isabs(path) else False
    return os.path.relpath(path, folder) if inside else path


def class_chart(results: StudyResults) -> Picture:
    table = class_counts(results)
    return Picture(figures.class_distribution_png, table["train"].to_numpy(), table["validation"].to_numpy(),
                   results.class_names)  # fmt: skip


def sample_grid(results: StudyResults, per_class: int = 4, seed: int = 0) -> Picture:
    """A few images of each class, as the model sees them (decoded and resized)."""
    labels, images = results.data.decoded.labels, results.data.decoded.images
    rng = np.random.default_rng(seed)
    samples = [(name, images[rng.permutation(np.flatnonzero(labels == c))[:per_class]])
               for c, name in enumerate(results.class_names)]  # fmt: skip
    return Picture(figures.sample_mosaic_png, samples)


# -- the search -----------------------------------------------------------------------------------


def trials_table(results: StudyResults) -> pd.DataFrame:
    """Every trial: number, state, value, duration and parameters (Optuna's own table)."""
    table = results.study.trials_dataframe(attrs=("number", "state", "value", "duration", "params"))
    return table.rename(columns={"value": results.label}).set_index("number")


def leaders(results: StudyResults, top: int = 10) -> pd.DataFrame:
    """The ``top`` leading configurations, best first: the objective (a confirmed one's mean over its
    runs, with their number and sd), accuracy, epochs and parameters."""
    rows = []
    for r in configurations(results.trials)[:top]:
        t, kept = r.trial, TrialRecord.of(r.trial)
        rows.append({"trial": t.number, results.label: r.mean, "runs": len(r.runs), "runs sd": r.sd,
                     "accuracy": kept.accuracy, "best epoch": kept.best_epoch, "epochs": kept.epochs_run,
                     **t.params})  # fmt: skip
    return pd.DataFrame(rows).set_index("trial") if rows else pd.DataFrame()


def importances(results: StudyResults):
    """Optuna's parameter importances (fANOVA) as a plotly figure; a sentence while fewer than two
    complete trials differ in their parameters."""
    complete = ranked(results.trials)
    if len({json.dumps(t.params, sort_keys=True, default=str) for t in complete}) < 2:
        return "Parameter importances need two complete trials with different parameters; run the study on."
    return optuna.visualization.plot_param_importances(results.study, target_name=results.label)
