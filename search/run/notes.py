"""A finished trial's note in optuna-dashboard: its metrics in words and, for a complete trial, its
pictures, drawn in a process of their own and stored as the dashboard's artifacts of the trial."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna

from search.record import collapse_text, collapsed, shown_as
from search.store import study_id, trial_id
from search.store.artifacts import AtomicArtifactStore, dashboard_artifact_key, upload


class DrawingProcess:
    """``draw_pictures`` in a Python process of its own (``python -m search.pictures``), one job at a
    time: a JSON line in on its stdin, a JSON line out on its stdout. It runs at a lower CPU
    priority, ignores Ctrl-C (its worker stops it), and ends at the end of its stdin, so it never
    outlives its worker, however the worker ended."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
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


log = logging.getLogger(__name__)


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

    def __init__(self, store: AtomicArtifactStore) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pictures")
        self.pending: list[Future] = []
        self.drawer: DrawingProcess | None = None

    def _draw(self, best: dict[str, Any], class_names: Sequence[str], work: str) -> dict[str, Path]:
        """On the pictures thread only: one job at a time. A drawing process that died is replaced."""
        if self.drawer is None or self.drawer.process.poll() is not None:
            self.drawer = DrawingProcess()
        return self.drawer.draw(best, class_names, work)

    def submit(self, trial: optuna.Trial, result: Any, *, draw: bool = True,
               confirming: dict[str, int] | None = None) -> None:  # fmt: skip
        """The trial's note (with its pictures, if ``draw``), written on the pictures thread; a
        confirmation run's (``confirming``) says so first."""
        self.pending.append(self.pool.submit(self._attach, trial, result, draw=draw, confirming=confirming))

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

    def _upload(self, trial: optuna.Trial, path: Path) -> str:
        """Under optuna-dashboard's key for a trial's artifacts: a study attribute, writable after the trial ended."""

        def record(artifact_id: str, meta: str) -> None:
            key = dashboard_artifact_key(trial_id(trial), artifact_id)
            trial.storage.set_study_system_attr(study_id(trial.study, trial.storage), key, meta)

        def recorded(artifact_id: str) -> bool:
            key = dashboard_artifact_key(trial_id(trial), artifact_id)
            return key in trial.storage.get_study_system_attrs(study_id(trial.study, trial.storage))

        return upload(self.store, path, record, recorded)

    def _attach(self, trial: optuna.Trial, result: Any, *, draw: bool, confirming: dict[str, int] | None) -> None:
        from optuna_dashboard import save_note
        from optuna_dashboard.artifact import get_artifact_path

        best, names = result.best_metrics, result.class_names
        links = []
        if draw:
            with tempfile.TemporaryDirectory() as work:
                try:
                    pictures = self._draw(best, names, work)
                except (RuntimeError, OSError, ValueError) as error:  # the note goes on without them
                    log.warning("could not draw trial %d's pictures: %s", trial.number, error)
                    pictures = {}
                for title, path in pictures.items():
                    artifact_id = self._upload(trial, path)
                    links.append(f"### {title}\n\n![{title}]({get_artifact_path(trial, artifact_id)})")
        worst = sorted(range(len(names)), key=lambda c: best["per_class_f1"][c])[:3]
        value = f"{shown_as(result.objective)} {result.best_value:.4f}"
        others = [name for name in ("macro_f1", "accuracy", "balanced_accuracy") if name != result.objective]
        summary = (
            f"## Trial {trial.number}: {value} at epoch {result.best_epoch}\n\n"
            + "".join(f"{shown_as(name)} {best[name]:.4f}, " for name in others)
            + f"macro precision {best['macro_precision']:.4f}, macro recall {best['macro_recall']:.4f}, "
            f"{result.epochs_run} epochs"
            f"{' (pruned)' if result.stopped_early else ''}, "
            f"{result.train_images_per_second:.0f} img/s on {result.device}\n\n"
            "weakest classes: " + ", ".join(f"{names[c]} ({best['per_class_f1'][c]:.2f})" for c in worst)
        )
        if collapse := collapsed(best.get("confusion_matrix")):
            summary += f"\n\n**This model {collapse_text(collapse, names)}.**"
        if confirming is not None:
            summary += (f"\n\n**A confirmation run of trial {confirming['trial']}**, with seed {confirming['seed']}, "
                        "outside the budget: the study ranks that configuration by the mean of its runs "
                        "(search status).")  # fmt: skip
        save_note(trial, "\n\n".join([summary, *links]))
