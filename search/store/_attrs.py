"""A trial's user attributes in one transaction, and its artifacts recorded where Optuna's own
``upload_artifact`` records them (``_internals`` says why these use Optuna's private names)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy.dialects.postgresql
import sqlalchemy.dialects.sqlite

from search.store import _internals
from search.store._internals import TrialState, storage_of, trial_id, usable_rdb

# The databases whose INSERT ... ON CONFLICT DO UPDATE SQLAlchemy writes (SQLite's since 3.24).
_UPSERT = {"postgresql": sqlalchemy.dialects.postgresql.insert}
if sqlite3.sqlite_version_info >= (3, 24, 0):
    _UPSERT["sqlite"] = sqlalchemy.dialects.sqlite.insert


def set_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """``trial.set_user_attr`` for each of ``attrs``, in one transaction where the storage allows: a
    trial records about fifteen (its metrics, configuration, checkpoint), and one commit each was a
    third of the time a demo trial spends outside training. On PostgreSQL and SQLite the trial is
    read and checked once, then every row is one upsert (the same rows, and the same refusal of a
    finished trial, as Optuna's own write); elsewhere Optuna's per-attribute write, committed once."""
    write_attrs(trial.storage, trial_id(trial), attrs)
    cached = getattr(trial, "_cached_frozen_trial", None)  # what ``trial.user_attrs`` returns
    if cached is not None:
        cached.user_attrs.update(attrs)


def write_attrs(storage: optuna.storages.BaseStorage, trial: int, attrs: Mapping[str, Any]) -> None:
    """``attrs`` written on trial id ``trial``, in one transaction where the storage allows."""
    backend = usable_rdb(storage)
    if backend is None:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial, key, value)
    elif attrs:
        with _internals.scoped_session(backend.scoped_session, True) as session:
            _write_user_attrs(backend, session, trial, attrs)


def fail_with(storage: optuna.storages.BaseStorage, trial: int, attrs: Mapping[str, Any]) -> bool:
    """A running trial told FAIL with ``attrs`` (why), in one transaction where the storage allows,
    so that a reason never outlives its state: a worker that tells the trial COMPLETE meanwhile
    finds it failed, or fails it first and finds no reason written. False where it had finished
    (without the private names, Optuna's own writes, which raise ``UpdateFinishedTrialError``)."""
    backend = usable_rdb(storage)
    if backend is None:
        write_attrs(storage, trial, attrs)
        return storage.set_trial_state_values(trial, TrialState.FAIL)
    with _internals.scoped_session(backend.scoped_session, True) as session:
        found = _internals.models.TrialModel.find_or_raise_by_id(trial, session, for_update=True)
        if found.state != TrialState.RUNNING:
            return False
        if attrs:
            _write_user_attrs(backend, session, trial, attrs)
        found.state = TrialState.FAIL
        found.datetime_complete = datetime.now()  # local time, as Optuna writes it
    return True


def _write_user_attrs(storage: optuna.storages.RDBStorage, session, trial: int, attrs: Mapping[str, Any]) -> None:
    models = _internals.models
    table, upsert = models.TrialUserAttributeModel, _UPSERT.get(storage.engine.name)
    if upsert is None:
        for key, value in attrs.items():
            storage._set_trial_attr_without_commit(session, table, trial, key, value)
        return
    found = models.TrialModel.find_or_raise_by_id(trial, session)
    storage.check_trial_is_updatable(trial, found.state)
    rows = upsert(table).values(
        [{"trial_id": trial, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
    )
    session.execute(
        rows.on_conflict_do_update(
            index_elements=[table.trial_id, table.key], set_={"value_json": rows.excluded.value_json}
        )
    )


def trial_artifact_recorder(trial: optuna.Trial) -> Callable[[str, str], None] | None:
    """``record(artifact_id, meta_json)``: a stored file recorded as the trial's artifact, under the
    key Optuna's ``upload_artifact`` writes (``get_all_artifact_meta`` and the dashboard read it).
    None where this Optuna moved the key: the caller then uploads with ``upload_artifact`` itself."""
    if _internals.ARTIFACTS_ATTR_PREFIX is None:
        return None

    def record(artifact_id: str, meta_json: str) -> None:
        key = f"{_internals.ARTIFACTS_ATTR_PREFIX}{artifact_id}"
        trial.storage.set_trial_system_attr(trial_id(trial), key, meta_json)

    return record


def trial_artifact_recorded(trial: optuna.Trial) -> Callable[[str], bool]:
    """``recorded(artifact_id)``: whether the trial's record of that artifact is in the database."""

    def recorded(artifact_id: str) -> bool:
        key = f"{_internals.ARTIFACTS_ATTR_PREFIX}{artifact_id}"
        return key in trial.storage.get_trial_system_attrs(trial_id(trial))

    return recorded


def artifact_ids(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> list[str]:
    """The artifacts recorded for a trial of ``study`` (Optuna's reader needs the study's storage)."""
    return [meta.artifact_id for meta in optuna.artifacts.get_all_artifact_meta(trial, storage=storage_of(study))]
