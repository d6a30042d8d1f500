"""Checkpoint retention after each trial: the files of every configuration below the best few are
removed, each asked of the store once by a worker, however many trials later name it."""

from __future__ import annotations

import optuna

from search.run.retention import Retention
from search.store import AtomicArtifactStore


def _trial(number: int, value: float, store: AtomicArtifactStore, tmp_path) -> optuna.trial.FrozenTrial:
    source = tmp_path / f"checkpoint-{number}.safetensors"
    source.write_bytes(b"weights")
    artifact_id = f"ckpt-{number}"
    store.write(artifact_id, source.open("rb"))
    trial = optuna.trial.create_trial(value=value, user_attrs={"checkpoint_artifact": artifact_id})
    trial.number = number
    return trial


def test_retention_keeps_the_best_and_asks_the_store_for_each_removed_file_once(tmp_path):
    store = AtomicArtifactStore(tmp_path / "artifacts")
    trials = [_trial(n, value, store, tmp_path) for n, value in enumerate([0.5, 0.9, 0.7, 0.1])]
    asked: list[str] = []
    real = store.remove
    store.remove = lambda artifact_id: asked.append(artifact_id) or real(artifact_id)
    retention = Retention()
    retention.keep_top(trials, store, keep=2)
    kept = sorted(p.name for p in store.base_path.iterdir())
    assert kept == ["ckpt-1", "ckpt-2"] and sorted(asked) == ["ckpt-0", "ckpt-3"]
    trials.append(_trial(4, 0.8, store, tmp_path))
    for _ in range(3):  # the trials after it: each step reads every finished trial again
        retention.keep_top(trials, store, keep=2)
    assert sorted(p.name for p in store.base_path.iterdir()) == ["ckpt-1", "ckpt-4"]
    assert sorted(asked) == ["ckpt-0", "ckpt-2", "ckpt-3"]  # 0 and 3 not asked again
