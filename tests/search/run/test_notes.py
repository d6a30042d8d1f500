"""Trial pictures: drawn in a process of their own, which never outlives its worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna_dashboard import get_note

import search.pictures
from search.run.notes import TrialPictures
from search.store import AtomicArtifactStore, open_storage
from training import TrainResult

NAMES = ["cat", "dog", "fox"]


def finished_result() -> TrainResult:
    best = {
        "macro_f1": 0.61,
        "accuracy": 0.7,
        "balanced_accuracy": 0.63,
        "macro_precision": 0.6,
        "macro_recall": 0.62,
        "per_class_f1": [0.9, 0.5, 0.43],
        "confusion_matrix": [[9, 1, 0], [2, 5, 3], [1, 3, 3]],
    }
    return TrainResult(
        best_epoch=2,
        best_metrics=best,
        history=[best] * 4,
        train_images_per_second=812.0,
        checkpoint=None,
        device="cpu",
        class_names=tuple(NAMES),
    )


@pytest.fixture
def trials(tmp_path):
    """Two running trials of a real SQLite study and the artifact store they write to."""
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/studies.db"), study_name=uuid.uuid4().hex)
    return study, [study.ask(), study.ask()], AtomicArtifactStore(tmp_path / "artifacts")


def pngs(store: AtomicArtifactStore) -> list[Path]:
    return [p for p in store.base_path.iterdir() if p.read_bytes()[:4] == b"\x89PNG"]


@pytest.mark.slow
def test_pictures_are_drawn_outside_the_worker_process(trials, monkeypatch):
    study, (trial, _), store = trials

    def not_here(*args, **kwargs):
        raise AssertionError("drawn on the worker's own interpreter")

    # The worker's own drawing functions fail: the pictures can only come from another process.
    monkeypatch.setattr(search.pictures, "confusion_png", not_here)
    monkeypatch.setattr(search.pictures, "per_class_f1_png", not_here)
    pictures = TrialPictures(store)
    pictures.submit(trial, finished_result())
    pictures.pending[0].result()
    drawer = pictures.drawer
    pictures.wait()

    assert len(pngs(store)) == 2
    note = get_note(trial)
    assert "macro-F1 0.6100" in note and note.count("![") == 2
    assert drawer.process.pid != os.getpid() and drawer.process.returncode == 0  # and wait() ended it
    assert pictures.drawer is None


@pytest.mark.slow
def test_a_drawing_process_that_died_is_replaced_and_the_note_never_lost(trials):
    study, (first, second), store = trials
    pictures = TrialPictures(store)
    pictures.submit(first, finished_result())
    pictures.pending[0].result()
    pictures.drawer.process.kill()
    pictures.drawer.process.wait()
    pictures.submit(second, finished_result())
    pictures.wait()
    assert len(pngs(store)) == 4
    assert get_note(second).count("![") == 2


@pytest.mark.slow
def test_a_failed_drawing_still_leaves_the_note(trials, caplog):
    study, (trial, _), store = trials
    result = finished_result()
    result.best_metrics["confusion_matrix"] = [[1, 2], [3]]  # ragged: the drawing process cannot draw it
    pictures = TrialPictures(store)
    pictures.submit(trial, result)
    pictures.wait()
    assert pngs(store) == []
    assert "macro-F1 0.6100" in get_note(trial)
    assert "could not draw trial" in caplog.text


@pytest.mark.slow
def test_the_drawing_process_ends_with_its_worker_however_it_ended():
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, signal\n"
            "from search.run.notes import DrawingProcess\n"
            "print(DrawingProcess().process.pid, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    drawing = int(worker.stdout.readline())
    worker.wait(timeout=30)
    assert worker.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while _alive(drawing) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(drawing)


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie waiting for a parent to reap it has ended."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state
