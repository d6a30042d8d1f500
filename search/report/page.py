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
from search.pictures import confusion_png, per_class_f1_png
from search.record import TrialRecord, best, failures_by_reason, ranked
from search.report.figures import class_distribution_png, f1_vs_lr_png, image_grid_png, learning_curves_png
from search.run.progress import short
from search.store import AtomicArtifactStore, not_in_store, stored
from search.study import Study, validate_study
from search.study.setup import SPEC_ATTR
from training import make_folder

if TYPE_CHECKING:
    from training import PreparedData


def _confused_examples(spec: Study, store: AtomicArtifactStore, top: FrozenTrial, data: PreparedData, out: Path) -> str:
    """Example validation images of the three most confused (true → predicted) pairs."""
    from training import predict_validation

    kept = TrialRecord.of(top)
    if not kept.checkpoint_artifact:
        return "<p>The best trial's checkpoint is not stored; no example images.</p>"
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as file:
        if not stored(store, kept.checkpoint_artifact, copy_to=Path(file.name)):
            return f"<p>The best trial's checkpoint is {html.escape(not_in_store(store))}; no example images.</p>"
        probs, labels = predict_validation(Path(file.name), spec.trial_config(top.params, None))
    predicted = probs.argmax(1)
    names = data.decoded.class_names
    matrix = np.asarray(kept.confusion_matrix)
    np.fill_diagonal(matrix, 0)
    pairs = [divmod(int(i), matrix.shape[1]) for i in np.argsort(-matrix, axis=None)[:3]]
    pairs = [(a, b) for a, b in pairs if matrix[a, b] > 0]
    if not pairs:
        return "<p>No validation image is misclassified by the best trial.</p>"
    val_images = data.decoded.images[data.val_idx]
    rows = []
    for a, b in pairs:
        chosen = np.flatnonzero((labels == a) & (predicted == b))
        rows.append((f"true {names[a]} → predicted {names[b]} ({matrix[a, b]}×)", val_images[chosen[:8]]))
    image_grid_png(rows, out / "confused.png")
    return '<img src="confused.png" alt="most confused classes">'


def write_report(study: optuna.Study, store: AtomicArtifactStore, out: Path) -> Path:
    """The page ``out/index.html`` and its pictures beside it; returns the page's path."""
    from training import prepare_data

    make_folder(out, "the report folder", "give another --out")
    spec = validate_study(json.loads(study.user_attrs[SPEC_ATTR]), f"study '{study.study_name}'")
    data = prepare_data(spec.data, spec.seed)
    say_data_notes(data.notes)
    _data_pictures(data, out)
    trials = study.get_trials(deepcopy=False)
    best_section = _best_section(spec, store, trials, data, out)
    f1_vs_lr_png(trials, out / "f1_vs_lr.png")
    learning_curves_png(trials, out / "curves.png")
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    names, labels = data.decoded.class_names, data.decoded.labels
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(study.study_name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head><body>
<h1>Study {html.escape(study.study_name)}</h1>
<p>{", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no trials yet"}.
Data: {len(labels)} images, {len(names)} classes, {len(data.val_idx)} for validation; model {spec.model.name}.</p>
<h2>The data</h2><img src="classes.png" alt="class distribution"><img src="samples.png" alt="samples per class">
{best_section}
<h2>The search</h2><img src="f1_vs_lr.png" alt="F1 against learning rate"><img src="curves.png" alt="learning curves">
<h3>Top trials</h3>{_top_trials(trials)}
{_failed_section(trials)}
</body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"


def _data_pictures(data: PreparedData, out: Path) -> None:
    """The class distribution on both sides of the split, and a row of sample images per class."""
    names, labels = data.decoded.class_names, data.decoded.labels
    train_counts = np.bincount(labels[data.train_idx], minlength=len(names))
    val_counts = np.bincount(labels[data.val_idx], minlength=len(names))
    class_distribution_png(train_counts, val_counts, names, out / "classes.png")
    rng = np.random.default_rng(0)
    samples = [(n, data.decoded.images[rng.permutation(np.flatnonzero(labels == c))[:8]]) for c, n in enumerate(names)]
    image_grid_png(samples, out / "samples.png")


def _top_trials(trials: list[FrozenTrial]) -> str:
    """The ten best complete trials as a table: metrics, epochs and every parameter."""
    complete = ranked(trials)[:10]
    params = sorted({k for t in complete for k in t.params})
    head = "".join(f"<th>{html.escape(p)}</th>" for p in ["trial", "macro-F1", "accuracy", "epochs", *params])
    rows = []
    for t in complete:
        kept = TrialRecord.of(t)
        epochs = "" if kept.epochs_run is None else kept.epochs_run
        cells = [
            t.number,
            f"{t.value:.4f}",
            _four(kept.accuracy),
            epochs,
            *(short(t.params.get(p, "")) for p in params),
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _best_section(spec: Study, store: AtomicArtifactStore, trials: list[FrozenTrial], data: PreparedData,
                  out: Path) -> str:  # fmt: skip
    """The best complete trial's pictures and most confused classes; what there is instead while
    no trial has completed (a study still in its first trial, or only pruned and failed ones)."""
    top = best(trials)
    if top is None:
        return "<h2>The best trial</h2><p>No trial has completed yet; run the study on and write the report again.</p>"
    kept, names = TrialRecord.of(top), data.decoded.class_names
    confusion_png(kept.confusion_matrix, names, out / "confusion.png")
    per_class_f1_png(kept.per_class_f1, names, out / "per_class_f1.png")
    confused = _confused_examples(spec, store, top, data, out)
    return f"""<h2>The best trial</h2>
<p>Best: trial {top.number}, validation macro-F1 {top.value:.4f} (accuracy {_four(kept.accuracy)}).</p>
<img src="confusion.png" alt="confusion matrix"><img src="per_class_f1.png" alt="per-class F1">
<h3>Most confused classes</h3>{confused}"""


def _failed_section(trials: list[FrozenTrial]) -> str:
    """The failed trials by reason (out of memory, NaN loss, interrupted...), if any failed."""
    groups = failures_by_reason(trials)
    if not groups:
        return ""
    rows = "".join(
        f"<tr><td style='text-align:left'>{html.escape(reason)}</td><td>{len(numbers)}</td>"
        f"<td>{', '.join(map(str, numbers))}</td></tr>"
        for reason, numbers in groups
    )
    return f"<h3>Failed trials</h3><table><tr><th>reason</th><th>how many</th><th>trials</th></tr>{rows}</table>"


def _four(value: float | None) -> str:
    """A metric as the report's tables show it; nan where the trial did not record it."""
    return f"{value if value is not None else float('nan'):.4f}"
