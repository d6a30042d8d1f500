"""Trials whose worker stopped: found by their missing heartbeats, failed saying why, and queued
again (``_internals`` says why these use Optuna's private names)."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError

from search.store import _internals
from search.store._attrs import fail_with
from search.store._internals import TrialState, storage_of, usable_rdb


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
    backend = usable_rdb(storage)
    interval = backend.get_heartbeat_interval() if backend is not None else None
    if backend is None or interval is None:
        return []
    grace = timedelta(seconds=backend.grace_period or 2 * interval)
    models = _internals.models
    trial_table, beat_table = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
    trials, beats = trial_table.c, beat_table.c
    study = backend.get_study_id_from_name(study_name)
    with _internals.scoped_session(backend.scoped_session) as session:
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
    storage = storage_of(study)
    if usable_rdb(storage) is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # marked experimental
            optuna.storages.fail_stale_trials(study)
        return []
    stale = stale_trials(storage, study.study_name)
    failed = (fail_and_retry(study, one.trial_id, lambda trial, one=one: reason(one, trial)) for one in stale)
    return [trial for trial in failed if trial is not None]


def fail_and_retry(
    study: optuna.Study, trial_id: int, reason: Callable[[optuna.trial.FrozenTrial], Mapping[str, Any]]
) -> optuna.trial.FrozenTrial | None:
    """A running trial that its worker lost turns FAIL with the user attributes ``reason`` writes
    for it, in one transaction (a finished trial's cannot be written); the storage's stale-trial callback queues
    its params again (up to 3 times), without its user attributes (its worker, its reason) or its
    artifacts. The trial as it was before, or None where it had finished (told, or failed first)."""
    storage = storage_of(study)
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    with contextlib.suppress(UpdateFinishedTrialError):
        trial = storage.get_trial(trial_id)
        if trial.state != TrialState.RUNNING:
            return None
        if not fail_with(storage, trial_id, reason(trial)):  # its reason and its state: one transaction
            return None
        if callback is not None:
            retry = copy.deepcopy(trial)
            retry.user_attrs = {}
            prefix = _internals.ARTIFACTS_ATTR_PREFIX or "\0"
            retry.system_attrs = {k: v for k, v in retry.system_attrs.items() if not k.startswith(prefix)}
            callback(study, retry)
        return trial
    return None
