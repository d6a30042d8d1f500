"""The artifact store's writes: whole files only, and what a stopped writer left half written removed."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys

import pytest
import sqlalchemy

from search.store import AtomicArtifactStore
from search.store.artifacts import remove_temporaries, settle_unsure, upload


def _gone_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


def test_a_write_names_its_temporary_file_by_its_writer_and_leaves_only_the_whole_file(tmp_path, monkeypatch):
    store = AtomicArtifactStore(tmp_path / "artifacts")
    seen = []
    real = os.replace
    monkeypatch.setattr(
        os, "replace", lambda source, target: seen.append(os.path.basename(source)) or real(source, target)
    )
    store.write("a1", io.BytesIO(b"weights"))
    assert seen and seen[0].startswith(f".a1~{socket.gethostname()}~{os.getpid()}~")
    assert sorted(p.name for p in store.base_path.iterdir()) == ["a1"]


def test_what_a_stopped_writer_left_is_removed_and_a_live_writers_file_is_kept(tmp_path):
    store = AtomicArtifactStore(tmp_path / "artifacts")
    host = socket.gethostname()
    dead, alive, elsewhere = (f".x~{host}~{_gone_pid()}~ab", f".y~{host}~{os.getpid()}~cd", ".z~gpu-7~4121~ef")
    for name in (dead, alive, elsewhere, "kept"):
        (store.base_path / name).write_bytes(b"part")
    remove_temporaries(store)  # this machine's writers that no longer run
    assert sorted(p.name for p in store.base_path.iterdir()) == sorted([alive, elsewhere, "kept"])
    remove_temporaries(store, worker="gpu-7:4121")  # a worker known to be gone (its trial's heartbeats stopped)
    assert sorted(p.name for p in store.base_path.iterdir()) == sorted([alive, "kept"])
    remove_temporaries(store, worker=f"{host}:{os.getpid()}")  # named, but alive on this machine: its own
    assert sorted(p.name for p in store.base_path.iterdir()) == sorted([alive, "kept"])


def test_a_file_whose_record_cannot_be_written_is_taken_away_again(tmp_path):
    store = AtomicArtifactStore(tmp_path / "artifacts")
    (tmp_path / "best.safetensors").write_bytes(b"weights")

    def database_gone(artifact_id, meta):
        raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("server closed the connection unexpectedly"))

    with pytest.raises(sqlalchemy.exc.OperationalError):
        upload(store, tmp_path / "best.safetensors", database_gone)
    assert list(store.base_path.iterdir()) == []


def test_a_record_whose_reply_was_lost_keeps_its_file_and_one_nobody_can_confirm_keeps_it_too(tmp_path):
    """The record's commit landed and its reply was lost: the checkpoint it names stays. Where the
    database cannot be asked, the bytes stay too: a record must never name a missing file."""
    store = AtomicArtifactStore(tmp_path / "artifacts")
    (tmp_path / "best.safetensors").write_bytes(b"weights")
    records = {}

    def reply_lost(artifact_id, meta):
        records[artifact_id] = meta  # committed
        raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("server closed the connection unexpectedly"))

    artifact_id = upload(store, tmp_path / "best.safetensors", reply_lost, records.__contains__)
    assert (store.base_path / artifact_id).read_bytes() == b"weights" and artifact_id in records

    away = [True]

    def still_away(artifact_id):
        if away:
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("connection refused"))
        return False  # back: it never landed

    def never_written(artifact_id, meta):
        raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("server closed the connection unexpectedly"))

    with pytest.raises(sqlalchemy.exc.OperationalError):
        upload(store, tmp_path / "best.safetensors", never_written, still_away)
    assert len(list(store.base_path.iterdir())) == 2  # kept: nobody could say it was not recorded
    settle_unsure(store)
    assert len(list(store.base_path.iterdir())) == 2 and len(store.unsure) == 1  # still away: still kept
    away.clear()
    settle_unsure(store)
    assert len(list(store.base_path.iterdir())) == 1 and not store.unsure  # back, and no record: removed
    with pytest.raises(sqlalchemy.exc.OperationalError):
        upload(store, tmp_path / "best.safetensors", never_written, lambda artifact_id: False)
    assert len(list(store.base_path.iterdir())) == 1  # surely not recorded: taken away again


def test_a_trials_checkpoint_whose_record_landed_without_a_reply_is_kept_and_named(tmp_path, monkeypatch):
    import optuna

    from search.store import open_storage
    from search.store.artifacts import upload_to_trial

    store = AtomicArtifactStore(tmp_path / "artifacts")
    (tmp_path / "best.safetensors").write_bytes(b"weights")
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    trial = study.ask()
    written = trial.storage.set_trial_system_attr

    def reply_lost(*args):
        written(*args)
        raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(trial.storage, "set_trial_system_attr", reply_lost)
    artifact_id = upload_to_trial(store, tmp_path / "best.safetensors", trial)
    assert (store.base_path / artifact_id).read_bytes() == b"weights"
    assert [meta.artifact_id for meta in optuna.artifacts.get_all_artifact_meta(trial)] == [artifact_id]
