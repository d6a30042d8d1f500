"""``search report``: one static HTML page with pictures of the data, the best model and the search."""

from __future__ import annotations

import html
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.console import say_data_notes
from search.ensemble import ENSEMBLE_ATTR, out_of_fold
from search.pictures import confusion_png, per_class_f1_png
from search.ranking import best, configurations, ranked
from search.record import TrialRecord, shown_as
from search.report import sections
from search.report.figures import (
    class_distribution_png,
    image_grid_png,
    learning_curves_png,
    predicted_vs_true_png,
    sample_mosaic_png,
    value_vs_lr_png,
)
from search.store import AtomicArtifactStore, not_in_store, stored
from search.study import StudySpec, validate_study
from search.study.inputs import data_facts
from search.study.recorded import SPEC_ATTR, objective
from training import SearchServiceError, make_folder

if TYPE_CHECKING:
    from training import PreparedData

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}img{max-width:100%}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;
white-space:nowrap}.wide{overflow-x:auto}
.warn{color:#a40000;font-weight:bold}"""


def write_report(study: optuna.Study, store: AtomicArtifactStore, out: Path) -> Path:
    """The page ``out/index.html`` and its pictures beside it; returns the page's path."""
    from training import prepare_data

    make_folder(out, "the report folder", "give another --out")
    spec = validate_study(json.loads(study.user_attrs[SPEC_ATTR]), f"study '{study.study_name}'")
    data = prepare_data(spec.data, spec.seed)
    say_data_notes(data.notes)
    _data_pictures(data, out)
    trials = study.get_trials(deepcopy=False)
    label = shown_as(objective(study.user_attrs))
    value_vs_lr_png(trials, out / "value_vs_lr.png", label)
    learning_curves_png(_curves(ranked(trials)[:6]), out / "curves.png", label)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    facts = data_facts(study.user_attrs) or data.facts  # as the study's runs found the data
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(study.study_name)}</title>
<style>{STYLE}</style></head><body>
<h1>Study {html.escape(study.study_name)}</h1>
<p>{", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no trials yet"}; model {spec.model.name}.
Epochs are counted from 0, as in the live lines, the dashboard and <code>search best</code>.</p>
<h2>The data</h2>{sections.data_facts(facts)}
<img src="classes.png" alt="class distribution"><img src="samples.png" alt="samples per class">
{_best_section(spec, store, trials, data, out, label)}
<h2>The search</h2><img src="value_vs_lr.png" alt="{html.escape(label)} against learning rate">
<img src="curves.png" alt="learning curves">
<h3>Top trials</h3><div class="wide">{sections.top_trials(trials, label)}</div>
{sections.noise(configurations(trials), facts if objective(study.user_attrs) == "macro_f1" else None)}
{sections.ensemble(study.user_attrs.get(ENSEMBLE_ATTR), label)}
<h3>Every trial</h3>{sections.every_trial(trials, label)}
{sections.failed_trials(trials)}
</body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"


def _curves(top: list[FrozenTrial]) -> list[tuple[str, list[float | None], list[float]]]:
    """(name, training loss per epoch, the objective per epoch) of each of the ``top`` trials."""
    curves = []
    for t in top:
        values = [t.intermediate_values[step] for step in sorted(t.intermediate_values)]
        curves.append((f"trial {t.number}, {t.value:.3f}", TrialRecord.of(t).epoch_train_loss or [], values))
    return curves


def _data_pictures(data: PreparedData, out: Path) -> None:
    """The class distribution on both sides of the split, and a few sample images of each class."""
    names, labels = data.decoded.class_names, data.decoded.labels
    train_counts = np.bincount(labels[data.train_idx], minlength=len(names))
    val_counts = np.bincount(labels[data.val_idx], minlength=len(names))
    class_distribution_png(train_counts, val_counts, names, out / "classes.png")
    rng = np.random.default_rng(0)
    samples = [(n, data.decoded.images[rng.permutation(np.flatnonzero(labels == c))[:4]]) for c, n in enumerate(names)]
    sample_mosaic_png(samples, out / "samples.png")


def _best_section(spec: StudySpec, store: AtomicArtifactStore, trials: list[FrozenTrial], data: PreparedData,
                  out: Path, label: str) -> str:  # fmt: skip
    """The best complete trial's scores, pictures and most confused classes; what there is instead
    while no trial has completed (a study still in its first trial, or only pruned and failed ones)."""
    top = best(trials)
    if top is None:
        return "<h2>The best trial</h2><p>No trial has completed yet; run the study on and write the report again.</p>"
    kept, names = TrialRecord.of(top), data.decoded.class_names
    confusion_png(kept.confusion_matrix, names, out / "confusion.png")
    per_class_f1_png(kept.per_class_f1, names, out / "per_class_f1.png")
    predicted_vs_true_png(kept.confusion_matrix, names, out / "predicted.png")
    confused = _confused_examples(spec, store, top, data, out)
    return f"""<h2>The best trial</h2>{sections.best_trial(top, names, label)}
<img src="predicted.png" alt="true and predicted classes">
<img src="confusion.png" alt="confusion matrix"><img src="per_class_f1.png" alt="per-class F1">
<h3>Most confused classes</h3>{confused}"""


def _confused_examples(spec: StudySpec, store: AtomicArtifactStore, top: FrozenTrial, data: PreparedData,
                       out: Path) -> str:  # fmt: skip
    """Example validation images of the three most confused (true → predicted) pairs."""
    from training import predict_validation

    kept = TrialRecord.of(top)
    if kept.out_of_fold_artifact:  # cross-validated: every image, predicted by the fold model that did not train on it
        try:
            probs, labels = out_of_fold(store, top)
        except SearchServiceError as error:
            return f"<p>{html.escape(str(error))}; no example images.</p>"
        val_images = data.decoded.images
    elif not kept.checkpoint_artifact:
        return "<p>The best trial's checkpoint is not stored; no example images.</p>"
    else:
        with tempfile.NamedTemporaryFile(suffix=".safetensors") as file:
            if not stored(store, kept.checkpoint_artifact, copy_to=Path(file.name)):
                return f"<p>The best trial's checkpoint is {html.escape(not_in_store(store))}; no example images.</p>"
            probs, labels = predict_validation(Path(file.name), spec.trial_config(top.params, None))
        val_images = data.decoded.images[data.val_idx]
    predicted = probs.argmax(1)
    names = data.decoded.class_names
    matrix = np.asarray(kept.confusion_matrix)
    np.fill_diagonal(matrix, 0)
    pairs = [divmod(int(i), matrix.shape[1]) for i in np.argsort(-matrix, axis=None)[:3]]
    pairs = [(a, b) for a, b in pairs if matrix[a, b] > 0]
    if not pairs:
        return "<p>No validation image is misclassified by the best trial.</p>"
    rows = []
    for a, b in pairs:
        chosen = np.flatnonzero((labels == a) & (predicted == b))
        rows.append((f"true {names[a]} → predicted {names[b]} ({matrix[a, b]}×)", val_images[chosen[:8]]))
    image_grid_png(rows, out / "confused.png")
    return '<img src="confused.png" alt="most confused classes">'
