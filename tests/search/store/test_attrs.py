"""A trial's user attributes in one transaction, on SQLite and PostgreSQL, and its artifacts
recorded where Optuna looks."""

from __future__ import annotations

import contextlib
import uuid

import optuna
import pytest
import sqlalchemy

from search.store import AtomicArtifactStore, _internals, open_storage, set_user_attrs
from search.store.artifacts import upload_to_trial

ATTRS = {
    "macro_f1": 0.75,
    "per_class_f1": [0.5, None, 1.0],
    "confusion_matrix": [[3, 1], [0, 4]],
    "device": "cuda",
    "config": '{"lr": 0.001}',
}


@contextlib.contextmanager
def counted(engine: sqlalchemy.engine.Engine, event: str = "commit"):
    """A list that gets one entry per ``event`` on ``engine`` inside the block (``commit``: one per
    transaction committed; ``before_cursor_execute``: one per SQL statement sent)."""
    seen: list = []

    def count(*args) -> None:
        seen.append(args)

    sqlalchemy.event.listen(engine, event, count)
    try:
        yield seen
    finally:
        sqlalchemy.event.remove(engine, event, count)


def test_user_attributes_are_one_commit_and_read_back_as_if_set_one_by_one(storage_url):
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name=f"attrs-{uuid.uuid4().hex[:8]}")
    one_by_one, batched = study.ask(), study.ask()
    for key, value in ATTRS.items():
        one_by_one.set_user_attr(key, value)

    with counted(storage.engine) as commits:
        set_user_attrs(batched, ATTRS)
        set_user_attrs(batched, {"macro_f1": 0.8})  # a second write of a key replaces it, as set_user_attr does

    assert len(commits) == 2
    assert batched.user_attrs == ATTRS | {"macro_f1": 0.8}  # the running trial sees them too
    # Read back through a storage of its own, as another worker or the dashboard would.
    trials = optuna.load_study(study_name=study.study_name, storage=storage_url).trials
    assert trials[0].user_attrs == ATTRS
    assert trials[1].user_attrs == ATTRS | {"macro_f1": 0.8}
    optuna.delete_study(study_name=study.study_name, storage=storage)


def test_a_finished_trial_refuses_attributes_as_optuna_does(storage_url):
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name=f"attrs-{uuid.uuid4().hex[:8]}")
    trial = study.ask()
    study.tell(trial, 0.5)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_user_attrs(trial, ATTRS)
    assert optuna.load_study(study_name=study.study_name, storage=storage_url).trials[0].user_attrs == {}
    optuna.delete_study(study_name=study.study_name, storage=storage)


def test_other_storages_get_the_attributes_one_by_one():
    study = optuna.create_study()  # in memory
    trial = study.ask()
    set_user_attrs(trial, ATTRS)
    assert study.trials[0].user_attrs == ATTRS


def test_without_the_optuna_internals_it_needs_the_attributes_are_still_written(tmp_path, monkeypatch):
    """Optuna is not pinned: if a release renames what the one-transaction write uses, the
    attributes go one commit each instead of failing the trial."""
    monkeypatch.setattr(_internals, "MISSING", ["a private name this Optuna lacks"])
    storage = open_storage(f"sqlite:///{tmp_path}/studies.db")
    study = optuna.create_study(storage=storage, study_name="fallback")
    trial = study.ask()
    with counted(storage.engine) as commits:
        set_user_attrs(trial, ATTRS)
    assert len(commits) == len(ATTRS)
    assert optuna.load_study(study_name="fallback", storage=storage).trials[0].user_attrs == ATTRS


def test_user_attributes_cost_two_statements_however_many_there_are(storage_url):
    """The trial is read and checked once, and every attribute goes in one upsert: on PostgreSQL
    each statement is a round trip (Optuna's per-attribute write sends two per attribute)."""
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name=f"attrs-{uuid.uuid4().hex[:8]}")
    trial = study.ask()
    many = {f"metric_{i}": i / 10 for i in range(15)}
    with counted(storage.engine, "before_cursor_execute") as statements:
        set_user_attrs(trial, many)
    sent = [args[2].split()[0].upper() for args in statements]
    assert sent.count("SELECT") == 1 and sent.count("INSERT") == 1 and len(sent) <= 3, sent
    assert optuna.load_study(study_name=study.study_name, storage=storage_url).trials[0].user_attrs == many
    optuna.delete_study(study_name=study.study_name, storage=storage)


def test_a_checkpoint_is_recorded_where_optuna_looks_with_or_without_its_private_key(tmp_path, monkeypatch):
    """Optuna's public reader finds the trial's file, recorded by the project's upload (bytes first)
    or, where this Optuna moved its key, by Optuna's own ``upload_artifact``."""
    store = AtomicArtifactStore(tmp_path / "artifacts")
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/studies.db"))
    checkpoint = tmp_path / "best.safetensors"
    checkpoint.write_bytes(b"weights")
    ours = upload_to_trial(store, checkpoint, study.ask())
    monkeypatch.setattr(_internals, "ARTIFACTS_ATTR_PREFIX", None)
    theirs = upload_to_trial(store, checkpoint, study.ask())
    for trial, artifact_id in zip(study.trials, (ours, theirs)):
        [meta] = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
        assert (meta.artifact_id, meta.filename) == (artifact_id, "best.safetensors")
        assert (store.base_path / artifact_id).read_bytes() == b"weights"
