"""Every use of Optuna's private modules and attributes, in this one file, each with a fallback to
Optuna's public API.

Optuna is not pinned, and a release may move what is private. ``MISSING`` names what this Optuna
lacks; the fallbacks then run (a trial's attributes one commit each, no list of stale trials, ids
looked up by name, checkpoints uploaded by Optuna's own ``upload_artifact``) and
``tests/search/store/test_optuna_private.py`` fails, saying what moved.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sqlite3
import threading
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import optuna
import sqlalchemy.dialects.postgresql
import sqlalchemy.dialects.sqlite
from optuna.exceptions import UpdateFinishedTrialError

MISSING: list[str] = []
try:
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
except ImportError as error:
    MISSING.append(f"optuna.storages._rdb ({error})")
try:
    from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX
except ImportError as error:
    ARTIFACTS_ATTR_PREFIX = None
    MISSING.append(f"optuna.artifacts._upload.ARTIFACTS_ATTR_PREFIX ({error})")
for _name in ("_set_trial_attr_without_commit", "_get_trials"):
    if not hasattr(optuna.storages.RDBStorage, _name):
        MISSING.append(f"RDBStorage.{_name}")

# The databases whose INSERT ... ON CONFLICT DO UPDATE SQLAlchemy writes (SQLite's since 3.24).
_UPSERT = {"postgresql": sqlalchemy.dialects.postgresql.insert}
if sqlite3.sqlite_version_info >= (3, 24, 0):
    _UPSERT["sqlite"] = sqlalchemy.dialects.sqlite.insert

TrialState = optuna.trial.TrialState
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def rdb_storage(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    """The RDB storage behind ``storage`` (Optuna puts a cache in front of one), or None."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def study_id(study: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """The study's id in ``storage`` (Optuna's study keeps it privately; the public way asks the database)."""
    found = getattr(study, "_study_id", None)
    return found if isinstance(found, int) else storage.get_study_id_from_name(study.study_name)


def trial_id(trial: optuna.Trial) -> int:
    """A running trial's id in its storage (kept privately; the public way asks by its study and number)."""
    found = getattr(trial, "_trial_id", None)
    if isinstance(found, int):
        return found
    storage = trial.storage
    return storage.get_trial_id_from_study_id_trial_number(study_id(trial.study, storage), trial.number)


def trial_artifact_recorder(trial: optuna.Trial) -> Callable[[str, str], None] | None:
    """``record(artifact_id, meta_json)``: a stored file recorded as the trial's artifact, under the
    key Optuna's ``upload_artifact`` writes (``get_all_artifact_meta`` and the dashboard read it).
    None where this Optuna moved the key: the caller then uploads with ``upload_artifact`` itself."""
    if ARTIFACTS_ATTR_PREFIX is None:
        return None

    def record(artifact_id: str, meta_json: str) -> None:
        trial.storage.set_trial_system_attr(trial_id(trial), f"{ARTIFACTS_ATTR_PREFIX}{artifact_id}", meta_json)

    return record


def artifact_ids(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> list[str]:
    """The artifacts recorded for a trial of ``study`` (Optuna's reader needs the study's storage)."""
    return [meta.artifact_id for meta in optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)]


def set_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """``trial.set_user_attr`` for each of ``attrs``, in one transaction where the storage allows: a
    trial records about fifteen (its metrics, configuration, checkpoint), and one commit each was a
    third of the time a demo trial spends outside training. On PostgreSQL and SQLite the trial is
    read and checked once, then every row is one upsert (the same rows, and the same refusal of a
    finished trial, as Optuna's own write); elsewhere Optuna's per-attribute write, committed once."""
    _write_attrs(trial.storage, trial_id(trial), attrs)
    cached = getattr(trial, "_cached_frozen_trial", None)  # what ``trial.user_attrs`` returns
    if cached is not None:
        cached.user_attrs.update(attrs)


def _write_attrs(storage: optuna.storages.BaseStorage, trial: int, attrs: Mapping[str, Any]) -> None:
    backend = rdb_storage(storage)
    if backend is None or MISSING:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial, key, value)
    elif attrs:
        _write_user_attrs(backend, trial, attrs)


def _write_user_attrs(storage: optuna.storages.RDBStorage, trial: int, attrs: Mapping[str, Any]) -> None:
    table, upsert = models.TrialUserAttributeModel, _UPSERT.get(storage.engine.name)
    with _create_scoped_session(storage.scoped_session, True) as session:
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


@dataclass(frozen=True)
class StaleTrial:
    """A running trial whose worker stopped: its last heartbeat (UTC), or None where it sent none."""

    trial_id: int
    number: int
    last_heartbeat: datetime | None


def stale_trials(storage: optuna.storages.BaseStorage, study_name: str) -> list[StaleTrial]:
    """The study's running trials whose worker has sent no heartbeat for the grace period (it was
    killed or lost), and those that never sent one and started longer ago than that (a worker
    killed between asking for its trial and its first heartbeat, which Optuna's own list leaves
    running for ever, and the study's budget with it). Heartbeats are the database's clock
    (Optuna writes ``now()``); a trial's start is its worker's, read as Optuna gives it (local
    time, however this Optuna stores it). Without the private names, or heartbeats, none is known."""
    backend = rdb_storage(storage)
    interval = backend.get_heartbeat_interval() if backend is not None else None
    if backend is None or MISSING or interval is None:
        return []
    grace = timedelta(seconds=backend.grace_period or 2 * interval)
    trial_table, beat_table = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
    trials, beats = trial_table.c, beat_table.c
    study = backend.get_study_id_from_name(study_name)
    with _create_scoped_session(backend.scoped_session) as session:
        now = session.execute(sqlalchemy.func.now()).scalar_one().replace(tzinfo=None)
        rows = session.execute(
            sqlalchemy.select(trials.trial_id, trials.number, trials.datetime_start, beats.heartbeat)
            .select_from(trial_table.outerjoin(beat_table, beats.trial_id == trials.trial_id))
            .where(trials.study_id == study, trials.state == TrialState.RUNNING)
        ).all()
    utc_now = datetime.now(timezone.utc).replace(tzinfo=None)
    found = []
    for trial, number, started, beat in rows:
        if beat is not None and now - beat > grace:
            found.append(StaleTrial(trial, number, utc_now - (now - beat)))
        elif beat is None and started is not None:
            start = backend.get_trial(trial).datetime_start
            if start is not None and datetime.now() - start > grace:
                found.append(StaleTrial(trial, number, None))
    return found


def stale_trial_numbers(storage: optuna.storages.BaseStorage, study_name: str) -> set[int]:
    """The numbers of ``stale_trials``: the next worker to start a trial fails them and queues them again."""
    return {stale.number for stale in stale_trials(storage, study_name)}


def fail_stale_trials(
    study: optuna.Study, reason: Callable[[StaleTrial, optuna.trial.FrozenTrial], Mapping[str, Any]]
) -> list[optuna.trial.FrozenTrial]:
    """``stale_trials`` failed and queued again (``fail_and_retry``), each with the user attributes
    ``reason`` writes for it, as Optuna's ``fail_stale_trials`` fails them without one. The failed
    trials, as they were before. Without the private names, Optuna's own, and none is returned."""
    if rdb_storage(study._storage) is None or MISSING:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # marked experimental
            optuna.storages.fail_stale_trials(study)
        return []
    stale = stale_trials(study._storage, study.study_name)
    failed = (fail_and_retry(study, one.trial_id, lambda trial, one=one: reason(one, trial)) for one in stale)
    return [trial for trial in failed if trial is not None]


def fail_and_retry(
    study: optuna.Study, trial_id: int, reason: Callable[[optuna.trial.FrozenTrial], Mapping[str, Any]]
) -> optuna.trial.FrozenTrial | None:
    """A running trial that its worker lost turns FAIL, first given the user attributes ``reason``
    writes for it (a finished trial's cannot be written); the storage's stale-trial callback queues
    its params again (up to 3 times), without its user attributes (its worker, its reason) or its
    artifacts. The trial as it was before, or None where it had finished (told, or failed first)."""
    storage = study._storage
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    with contextlib.suppress(UpdateFinishedTrialError):
        trial = storage.get_trial(trial_id)
        if trial.state != TrialState.RUNNING:
            return None
        _write_attrs(storage, trial_id, reason(trial))
        if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
            return None
        if callback is not None:
            retry = copy.deepcopy(trial)
            retry.user_attrs = {}
            retry.system_attrs = {
                k: v for k, v in retry.system_attrs.items() if not k.startswith(ARTIFACTS_ATTR_PREFIX or "\0")
            }
            callback(study, retry)
        return trial
    return None


def trial_counts(study: optuna.Study) -> Counter:
    """The study's trials by state name, counted by the database: the budget asks this of every
    trial start, under its lock, and Optuna's own ``get_trials`` reads every running trial whole
    (with its params, attributes and reports) each time, which grows with the workers. Without the
    private names, counted from ``get_trials``."""
    storage = getattr(study, "_storage", None)
    backend = rdb_storage(storage) if storage is not None else None
    if backend is None or MISSING:
        return Counter(t.state.name for t in study.get_trials(deepcopy=False))
    table = models.TrialModel
    with _create_scoped_session(backend.scoped_session) as session:
        rows = session.execute(
            sqlalchemy.select(table.state, sqlalchemy.func.count())
            .where(table.study_id == study_id(study, backend))
            .group_by(table.state)
        ).all()
    return Counter({state.name: count for state, count in rows})


def ask(study: optuna.Study, queued: int) -> optuna.Trial:
    """The next trial: a queued one where the study has one (``study.ask`` takes it atomically);
    else a new trial, made without ``study.ask``'s look for queued ones, which reads every
    unfinished trial whole (half a second at a thousand running trials, under the study's lock)."""
    private = all(hasattr(study, name) for name in ("_thread_local", "_storage", "_study_id"))
    if queued or MISSING or not private:
        return study.ask()
    study._thread_local.cached_all_trials = None  # as study.ask does: the sampler reads the study afresh
    return optuna.Trial(study, study._storage.create_new_trial(study._study_id))


class _Finished:
    """A study's finished trials as one storage client last read them, by trial id, each with the
    time it finished (a trial id of a study deleted and made again may come back as another trial)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_id: dict[int, tuple[Any, optuna.trial.FrozenTrial]] = {}


# Per storage client, per study id: a finished trial never changes, so each is fetched once.
_FINISHED: weakref.WeakKeyDictionary[optuna.storages.RDBStorage, dict[int, _Finished]] = weakref.WeakKeyDictionary()
_FETCH_ALL = 500  # more new finished trials than this: one read of them all, not a list of ids


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's finished trials (complete, pruned, failed), by number, as Optuna's own
    ``FrozenTrial``: shared, not to be changed. Optuna's ``get_trials`` reads every trial whole each
    time, running ones too, which grows with the workers and the study. Here one query lists the
    finished trials' ids and the time each finished, and only those this storage client has not
    read are fetched whole. Without the private names, Optuna's ``get_trials``."""
    storage = getattr(study, "_storage", None)
    backend = rdb_storage(storage) if storage is not None else None
    if backend is None or MISSING:
        return study.get_trials(deepcopy=False, states=FINISHED)
    study_key = study_id(study, backend)
    known = _FINISHED.setdefault(backend, {}).setdefault(study_key, _Finished())
    columns = models.TrialModel.__table__.c  # the model's datetimes are properties over these
    with known.lock:
        with _create_scoped_session(backend.scoped_session) as session:
            rows = session.execute(
                sqlalchemy.select(columns.trial_id, columns.datetime_complete).where(
                    columns.study_id == study_key, columns.state.in_(FINISHED)
                )
            ).all()
        finished = dict(rows)
        known.by_id = {i: kept for i, kept in known.by_id.items() if finished.get(i, object()) == kept[0]}
        new = set(finished) - set(known.by_id)
        if new:
            if known.by_id and len(new) <= _FETCH_ALL:
                fetched = backend._get_trials(study_key, FINISHED, new, max(finished))  # new ones and later
            else:
                fetched = backend._get_trials(study_key, FINISHED, set(), -1)
            for trial in fetched:  # one that finished since the ids were listed waits for the next read
                if trial._trial_id in finished:
                    known.by_id[trial._trial_id] = (finished[trial._trial_id], trial)
        return sorted((trial for _, trial in known.by_id.values()), key=lambda t: t.number)
