"""The report's own pictures: the data (class counts, sample images) and the search (F1 against the
learning rate, learning curves). The trial's pictures are ``search.pictures``'."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import ticker
from optuna.trial import FrozenTrial, TrialState

from search.pictures import new_figure, slant_class_names


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


def image_grid_png(
    rows: list[tuple[str, np.ndarray]], path: Path, per_row: int = 8, captions: list[list[str]] | None = None
) -> Path:
    """One row per (title, images[k, H, W, 3]) pair; ``captions``: a line under each image, row by row."""
    figure = new_figure(1.2 * per_row + 2.0, (1.3 if captions is None else 1.6) * len(rows) + 0.4)
    for r, (title, images) in enumerate(rows):
        for c in range(per_row):
            ax = figure.add_subplot(len(rows), per_row, r * per_row + c + 1)
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c])
                if captions is not None:
                    ax.text(0.5, -0.04, captions[r][c], fontsize=7, ha="center", va="top", transform=ax.transAxes)
            if c == 0:
                ax.set_title(title, fontsize=8, loc="left")
    figure.savefig(path)
    return path


def sample_mosaic_png(samples: list[tuple[str, np.ndarray]], path: Path, columns: int = 6) -> Path:
    """A few images of each class side by side under its name, the classes in a grid of ``columns``:
    a page's width, not a row per class."""
    rows = -(-len(samples) // columns)
    figure = new_figure(12.0, 1.1 * rows + 0.2)
    for k, (name, images) in enumerate(samples):
        ax = figure.add_subplot(rows, columns, k + 1)
        ax.axis("off")
        ax.set_title(name if len(images) else f"{name} (no image)", fontsize=10)
        if len(images):
            gap = np.full((images.shape[1], 2, 3), 255, dtype=np.uint8)
            ax.imshow(np.hstack([part for image in images for part in (image, gap)][:-1]))
    figure.savefig(path)
    return path


def predicted_vs_true_png(confusion: Sequence[Sequence[int]], names: Sequence[str], path: Path) -> Path:
    """How many validation images each class has (true) and how many the model gave it (predicted)."""
    counts = np.asarray(confusion)
    figure = new_figure(3.0 + 0.45 * len(names), 3.6)
    ax = figure.add_subplot()
    x = np.arange(len(names))
    ax.bar(x - 0.2, counts.sum(axis=1), width=0.4, label="true", color="#4c72b0")
    ax.bar(x + 0.2, counts.sum(axis=0), width=0.4, label="predicted", color="#dd8452")
    ax.set_xticks(x, names)
    slant_class_names(ax)
    ax.set_ylabel("validation images")
    ax.set_title("classes of the validation images: true and predicted (best trial, best epoch)")
    ax.legend()
    figure.savefig(path)
    return path


def value_vs_lr_png(trials: list[FrozenTrial], path: Path, objective: str) -> Path:
    """Each trial's value (its best, or its last before it was pruned) against its learning rate,
    by loss and by scheduler."""
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
        # labels at 1, 2 and 5 of each decade only: matplotlib labels every minor tick of a range
        # under a decade, and those overlap
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"best validation {objective}")
        ax.set_title(f"by {key}")
        ax.legend(fontsize=7)
    figure.savefig(path)
    return path


MARKERS = ("o", "s", "^", "D", "v", "P")


def learning_curves_png(curves: list[tuple[str, list[float | None], list[float]]], path: Path, objective: str) -> Path:
    """Training loss and the validation ``objective`` (as shown) per epoch (from 0), one line per
    (name, losses, values), each with its own marker; a curve equal to an earlier one says so in the
    legend, since it hides it."""
    figure = new_figure(12, 4)
    loss_ax, value_ax = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    drawn: dict[tuple, str] = {}
    for k, (label, losses, values) in enumerate(curves):
        same = drawn.get((tuple(losses), tuple(values)))
        drawn.setdefault((tuple(losses), tuple(values)), label)
        style = {"marker": MARKERS[k % len(MARKERS)], "markersize": 7 - k % 3, "alpha": 0.85}
        shown = f"{label} (same as {same})" if same else label
        if any(v is not None for v in losses):
            loss_ax.plot(range(len(losses)), [np.nan if v is None else v for v in losses], label=shown, **style)
        value_ax.plot(range(len(values)), values, label=shown, **style)
    for ax, what in ((loss_ax, "training loss"), (value_ax, f"validation {objective}")):
        ax.set_xlabel("epoch (from 0)")
        ax.set_ylabel(what)
        ax.set_title(f"{what} per epoch, top trials")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if value_ax.lines:  # one legend for both, beside them: inside, it hides the lines it names
        value_ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), title=f"trial, {objective}")
    figure.savefig(path)
    return path
