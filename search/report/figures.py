"""The report's own pictures: the data (class counts, sample images) and the search (F1 against the
learning rate, learning curves). The trial's pictures are ``search.pictures``'."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
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
