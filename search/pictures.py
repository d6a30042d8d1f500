"""Pictures of a trial: confusion-matrix heatmap and per-class F1 bars (seaborn, PNG).

Drawn with matplotlib's object API: no display, no global pyplot state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
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


class DrawingProcess:
    """``draw_pictures`` in a Python process of its own (``python -m search.pictures``), one job at a
    time: a JSON line in on its stdin, a JSON line out on its stdout. It runs at a lower CPU
    priority, ignores Ctrl-C (its worker stops it), and ends at the end of its stdin, so it never
    outlives its worker, however the worker ended."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "search.pictures"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )

    def draw(self, best: dict[str, Any], class_names: Sequence[str], work: str) -> dict[str, Path]:
        job = {"matrix": best["confusion_matrix"], "per_class_f1": best["per_class_f1"], "names": list(class_names),
               "work": work}  # fmt: skip
        try:
            self.process.stdin.write(json.dumps(job) + "\n")
            self.process.stdin.flush()
            answer = self.process.stdout.readline()
        except OSError:
            answer = ""
        if not answer:
            raise RuntimeError(f"the drawing process ended (exit code {self.process.poll()})")
        reply = json.loads(answer)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return {title: Path(path) for title, path in reply["pictures"].items()}

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


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


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _TrialHandle:
    """What optuna-dashboard reads from a trial to address its note and artifacts."""

    storage: Any
    study: Any
    _trial_id: int


class TrialPictures:
    """Writes each finished trial's note for the dashboard on a background thread, with pictures for
    the complete ones.

    Drawing an 18-class confusion matrix takes about a second of CPU: it overlaps the next trial's
    training instead of delaying it, and it is skipped for pruned trials (the bottom of the study,
    whose note gives their metrics), which on the demo's CPU made trials about a quarter slower
    when every trial drew. It happens in a process of its own (started on the first drawing, at a
    lower CPU priority): on a thread it held the worker's interpreter lock for that second, so the
    next trial's storage calls and, on a GPU, its kernel launches waited on it. The pictures go to
    the artifact store and are registered under optuna-dashboard's key for a trial's artifacts (a
    study attribute, so it can be written after the trial finished); the note links them.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pictures")
        self.pending: list[Future] = []
        self.drawer: DrawingProcess | None = None

    def _draw(self, best: dict[str, Any], class_names: Sequence[str], work: str) -> dict[str, Path]:
        """On the pictures thread only: one job at a time. A drawing process that died is replaced."""
        if self.drawer is None or self.drawer.process.poll() is not None:
            self.drawer = DrawingProcess()
        return self.drawer.draw(best, class_names, work)

    def submit(self, trial: Any, result: Any, draw: bool = True) -> None:
        handle = _TrialHandle(trial.storage, trial.study, trial._trial_id)
        self.pending.append(self.pool.submit(self._attach, handle, trial.number, result, draw))

    def wait(self) -> None:
        """Block until every submitted trial's pictures are attached, then stop the drawing process
        (a worker's last act)."""
        for future in self.pending:
            try:
                future.result()
            except Exception as error:  # pictures are a convenience: never fail the study for them
                log.warning("could not draw a trial's pictures: %s", error)
        self.pending.clear()
        if self.drawer is not None:
            self.drawer.close()
            self.drawer = None

    def _upload(self, handle: _TrialHandle, path: Path) -> str:
        """Under optuna-dashboard's key for a trial's artifacts: a study attribute, writable after the trial ended."""
        from search.storage import upload

        def record(artifact_id: str, meta: str) -> None:
            key = f"dashboard:artifacts:{handle._trial_id}:{artifact_id}"
            handle.storage.set_study_system_attr(handle.study._study_id, key, meta)

        return upload(self.store, path, record)

    def _attach(self, handle: _TrialHandle, number: int, result: Any, draw: bool) -> None:
        from optuna_dashboard import save_note
        from optuna_dashboard.artifact import get_artifact_path

        best, names = result.best_metrics, result.class_names
        links = []
        if draw:
            with tempfile.TemporaryDirectory() as work:
                try:
                    pictures = self._draw(best, names, work)
                except (RuntimeError, OSError, ValueError) as error:  # the note goes on without them
                    log.warning("could not draw trial %d's pictures: %s", number, error)
                    pictures = {}
                for title, path in pictures.items():
                    artifact_id = self._upload(handle, path)
                    links.append(f"### {title}\n\n![{title}]({get_artifact_path(handle, artifact_id)})")
        worst = sorted(range(len(names)), key=lambda c: best["per_class_f1"][c])[:3]
        summary = (
            f"## Trial {number}: macro-F1 {best['macro_f1']:.4f} at epoch {result.best_epoch + 1}\n\n"
            f"accuracy {best['accuracy']:.4f}, macro precision {best['macro_precision']:.4f}, "
            f"macro recall {best['macro_recall']:.4f}, {result.epochs_run} epochs"
            f"{' (pruned)' if result.stopped_early else ''}, "
            f"{result.train_images_per_second:.0f} img/s on {result.device}\n\n"
            "weakest classes: " + ", ".join(f"{names[c]} ({best['per_class_f1'][c]:.2f})" for c in worst)
        )
        save_note(handle, "\n\n".join([summary, *links]))


if __name__ == "__main__":
    serve_drawing()
