"""``search report``: one static HTML page with pictures of the data, the best model and the search."""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import optuna
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from search.export import not_in_store
from search.pictures import confusion_png, new_figure, per_class_f1_png, slant_class_names
from search.progress import short
from search.status import failures_by_reason
from search.storage import AtomicArtifactStore
from search.studyfile import validate_study
from training import make_folder

log = logging.getLogger(__name__)


def class_distribution_png(train_counts: np.ndarray, val_counts: np.ndarray, names: Sequence[str], path: Path) -> Path:
    order = np.argsort(-(train_counts + val_counts))
    figure = new_figure(3.0 + 0.4 * len(names), 3.6)
    ax = figure.add_subplot()
    x = np.arange(len(names))
    ax.bar(x, train_counts[order], label="train", color="#4c72b0")
    ax.bar(x, val_counts[order], bottom=train_counts[order], label="validation", color="#dd8452")
    ax.set_xticks(x, [names[i] for i in order])
    slant_class_names(ax)
    total = train_counts + val_counts
    ax.set_title(f"images per class (largest / smallest = {total.max() / max(total.min(), 1):.1f})")
    ax.set_ylabel("images")
    ax.legend()
    figure.savefig(path)
    return path


def image_grid_png(rows: list[tuple[str, np.ndarray]], path: Path, per_row: int = 8) -> Path:
    """One row per (title, images[k, H, W, 3]) pair."""
    figure = new_figure(1.2 * per_row + 2.0, 1.3 * len(rows) + 0.4)
    for r, (title, images) in enumerate(rows):
        for c in range(per_row):
            ax = figure.add_subplot(len(rows), per_row, r * per_row + c + 1)
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c])
            if c == 0:
                ax.set_title(title, fontsize=8, loc="left")
    figure.savefig(path)
    return path


def f1_vs_lr_png(trials: list[FrozenTrial], path: Path) -> Path:
    figure = new_figure(10, 3.8)
    for k, key in enumerate(("loss", "scheduler")):
        ax = figure.add_subplot(1, 2, k + 1)
        groups = sorted({t.params.get(key, "?") for t in trials})
        for g, color in zip(groups, ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2")):
            for state, marker in ((TrialState.COMPLETE, "o"), (TrialState.PRUNED, "x")):
                chosen = [t for t in trials if t.params.get(key) == g and t.state == state and "lr" in t.params]
                if chosen:
                    best = [t.value if t.value is not None else max(t.intermediate_values.values()) for t in chosen]
                    label = f"{g} ({state.name.lower()})"
                    ax.scatter([t.params["lr"] for t in chosen], best, c=color, marker=marker, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("best validation macro-F1")
        ax.set_title(f"by {key}")
        ax.legend(fontsize=7)
    figure.savefig(path)
    return path


def learning_curves_png(trials: list[FrozenTrial], path: Path) -> Path:
    figure = new_figure(7, 4)
    ax = figure.add_subplot()
    for t in trials:
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        if t.state == TrialState.COMPLETE:
            ax.plot([s + 1 for s in steps], values, color="#4c72b0", alpha=0.8)
        elif t.state == TrialState.PRUNED:
            ax.plot([s + 1 for s in steps], values, color="#999999", linestyle="--", alpha=0.8)
    ax.plot([], [], color="#4c72b0", label="complete")
    ax.plot([], [], color="#999999", linestyle="--", label="pruned")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation macro-F1")
    ax.set_title("learning curves")
    ax.legend()
    figure.savefig(path)
    return path


def _confused_examples(study_spec, store: AtomicArtifactStore, best: FrozenTrial, data, out: Path) -> str:
    """Example validation images of the three most confused (true → predicted) pairs."""
    import tempfile

    from training import predict_validation

    artifact_id = best.user_attrs.get("checkpoint_artifact")
    if not artifact_id:
        return "<p>The best trial's checkpoint is not stored; no example images.</p>"
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as file:
        try:
            with store.open_reader(artifact_id) as reader:
                file.write(reader.read())
        except ArtifactNotFound:
            return f"<p>The best trial's checkpoint is {html.escape(not_in_store(store))}; no example images.</p>"
        file.flush()
        probs, labels = predict_validation(Path(file.name), study_spec.trial_config(best.params, None))
    predicted = probs.argmax(1)
    names = data.decoded.class_names
    matrix = np.asarray(best.user_attrs["confusion_matrix"])
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
    from training import prepare_data

    make_folder(out, "the report folder", "give another --out")
    spec = validate_study(json.loads(study.user_attrs["spec"]), f"study '{study.study_name}'")
    data = prepare_data(spec.data, spec.seed)
    for note in data.notes:
        log.warning("%s", note)
    names = data.decoded.class_names
    labels = data.decoded.labels
    train_counts = np.bincount(labels[data.train_idx], minlength=len(names))
    val_counts = np.bincount(labels[data.val_idx], minlength=len(names))
    class_distribution_png(train_counts, val_counts, names, out / "classes.png")
    rng = np.random.default_rng(0)
    samples = [(n, data.decoded.images[rng.permutation(np.flatnonzero(labels == c))[:8]]) for c, n in enumerate(names)]
    image_grid_png(samples, out / "samples.png")

    trials = study.get_trials(deepcopy=False)
    best_section = _best_section(spec, store, trials, data, out)
    f1_vs_lr_png(trials, out / "f1_vs_lr.png")
    learning_curves_png(trials, out / "curves.png")

    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)[:10]
    params = sorted({k for t in complete for k in t.params})
    head = "".join(f"<th>{html.escape(p)}</th>" for p in ["trial", "macro-F1", "accuracy", "epochs", *params])
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(v))}</td>"
            for v in [
                t.number,
                f"{t.value:.4f}",
                f"{t.user_attrs.get('accuracy', float('nan')):.4f}",
                t.user_attrs.get("epochs_run", ""),
            ]
            + [short(t.params.get(p, "")) for p in params]
        )  # fmt: skip
        + "</tr>"
        for t in complete
    )
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(study.study_name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head><body>
<h1>Study {html.escape(study.study_name)}</h1>
<p>{", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no trials yet"}.
Data: {len(labels)} images, {len(names)} classes, {len(data.val_idx)} for validation; model {spec.model.name}.</p>
<h2>The data</h2><img src="classes.png" alt="class distribution"><img src="samples.png" alt="samples per class">
{best_section}
<h2>The search</h2><img src="f1_vs_lr.png" alt="F1 against learning rate"><img src="curves.png" alt="learning curves">
<h3>Top trials</h3><table><tr>{head}</tr>{body}</table>
{_failed_section(trials)}
</body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"


def _best_section(spec, store: AtomicArtifactStore, trials: list[FrozenTrial], data, out: Path) -> str:
    """The best complete trial's pictures and most confused classes; what there is instead while
    no trial has completed (a study still in its first trial, or only pruned and failed ones)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return "<h2>The best trial</h2><p>No trial has completed yet; run the study on and write the report again.</p>"
    best = max(complete, key=lambda t: t.value)
    names = data.decoded.class_names
    confusion_png(best.user_attrs["confusion_matrix"], names, out / "confusion.png")
    per_class_f1_png(best.user_attrs["per_class_f1"], names, out / "per_class_f1.png")
    confused = _confused_examples(spec, store, best, data, out)
    accuracy = best.user_attrs.get("accuracy", float("nan"))
    return f"""<h2>The best trial</h2>
<p>Best: trial {best.number}, validation macro-F1 {best.value:.4f} (accuracy {accuracy:.4f}).</p>
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
