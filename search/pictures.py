"""Pictures of a trial: confusion-matrix heatmap and per-class F1 bars (seaborn, PNG), drawn here or
in a drawing process of their own (``python -m search.pictures``, see ``search.run.notes``).

Drawn with matplotlib's object API: no display, no global pyplot state.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """A figure sized in inches. It has no renderer until ``savefig`` picks Agg for the PNG: seaborn's
    heatmap would otherwise draw the whole figure once more (about a third of its cost) to see
    whether tick labels overlap, and they are rotated here anyway."""
    return Figure(figsize=(width, height), dpi=90, layout="tight")


def slant_class_names(ax) -> None:
    """The x axis's class names at 60 degrees, each ending under its own column (rotated about their
    centres, long names would sit half a column to the left)."""
    for label in ax.get_xticklabels():
        label.set(rotation=60, ha="right", rotation_mode="anchor")


def confusion_png(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion matrix (true class per row), counts written in the cells."""
    import seaborn as sns

    counts = np.asarray(matrix)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    figure = new_figure(2.5 + 0.45 * n, 2.0 + 0.4 * n)
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
    slant_class_names(ax)
    ax.tick_params(axis="y", rotation=0)
    figure.savefig(path)
    return path


def per_class_f1_png(per_class_f1: Sequence[float], class_names: Sequence[str], path: Path) -> Path:
    """F1 of every class as bars, with the macro mean as a line."""
    import seaborn as sns

    values = np.asarray(per_class_f1, dtype=float)
    figure = new_figure(3.0 + 0.35 * len(class_names), 3.2)
    ax = figure.add_subplot()
    sns.barplot(x=list(class_names), y=values, color="#4c72b0", ax=ax)
    ax.axhline(values.mean(), color="#c44e52", linestyle="--", label=f"macro-F1 {values.mean():.3f}")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title("per-class F1 (validation, best epoch)")
    slant_class_names(ax)
    ax.legend(loc="lower right")
    figure.savefig(path)
    return path


def draw_pictures(
    matrix: Sequence[Sequence[int]], per_class_f1: Sequence[float], class_names: Sequence[str], work: str
) -> dict[str, Path]:
    """Both pictures of a trial's best epoch, as PNG files in ``work``, by title."""
    return {
        "confusion matrix": confusion_png(matrix, class_names, Path(work, "confusion_matrix.png")),
        "per-class F1": per_class_f1_png(per_class_f1, class_names, Path(work, "per_class_f1.png")),
    }


def serve_drawing() -> None:
    """The drawing process's loop (see ``DrawingProcess``)."""
    os.nice(10)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("ignore")  # its stderr goes nowhere; nothing it says should be lost there
    for line in sys.stdin:
        job = json.loads(line)
        try:
            pictures = draw_pictures(job["matrix"], job["per_class_f1"], job["names"], job["work"])
            reply: dict[str, Any] = {"pictures": {title: str(path) for title, path in pictures.items()}}
        except Exception as error:
            reply = {"error": f"{type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    os._exit(0)  # every reply is out; the worker waits for this exit, not for matplotlib's teardown (0.5 s)


if __name__ == "__main__":
    serve_drawing()
