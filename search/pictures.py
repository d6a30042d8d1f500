"""Pictures of a trial: confusion-matrix heatmap and per-class F1 bars (seaborn, PNG).

Drawn with matplotlib's object API on the Agg canvas: no display, no global pyplot state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=90, layout="tight")
    FigureCanvasAgg(figure)
    return figure


def confusion_png(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion matrix (true class per row), counts written in the cells."""
    import seaborn as sns

    counts = np.asarray(matrix)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    figure = _figure(2.5 + 0.45 * n, 2.0 + 0.4 * n)
    ax = figure.add_subplot()
    sns.heatmap(
        share,
        annot=counts if n <= 20 else False,
        fmt="d",
        cmap="Blues",
        vmin=0,
        vmax=1,
        ax=ax,
        xticklabels=class_names,
        yticklabels=class_names,
        cbar_kws={"label": "share of true class"},
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (validation, best epoch)")
    ax.tick_params(axis="x", rotation=60)
    ax.tick_params(axis="y", rotation=0)
    figure.savefig(path)
    return path


def per_class_f1_png(per_class_f1: Sequence[float], class_names: Sequence[str], path: Path) -> Path:
    """F1 of every class as bars, with the macro mean as a line."""
    import seaborn as sns

    values = np.asarray(per_class_f1, dtype=float)
    figure = _figure(3.0 + 0.35 * len(class_names), 3.2)
    ax = figure.add_subplot()
    sns.barplot(x=list(class_names), y=values, color="#4c72b0", ax=ax)
    ax.axhline(values.mean(), color="#c44e52", linestyle="--", label=f"macro-F1 {values.mean():.3f}")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title("per-class F1 (validation, best epoch)")
    ax.tick_params(axis="x", rotation=60)
    ax.legend(loc="lower right")
    figure.savefig(path)
    return path
