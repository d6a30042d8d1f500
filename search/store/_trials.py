"""A study's trials read as a worker needs them, lighter than Optuna's own reads, which read every
trial whole, running ones too, and grow with the workers and the study: counts by state, a new
trial asked for, and the finished trials fetched once each (``_internals`` says why these use
Optuna's private names)."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import Counter
from typing import Any

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from search.store import _internals, _lean
from search.store._internals import FINISHED, storage_of, study_id, trial_id, usable_rdb

# A confirmation run's trial system attribute: {"trial": the number of the trial whose configuration
# it trains again, "seed": its own seed}. Queued retries keep it, as they keep ``fixed_params``.
CONFIRMS = "search:confirms"


def confirming(state: str) -> str:
    """``trial_counts``' key of the confirmation runs in ``state`` (a state's name)."""
    return f"confirmation {state}"


def trial_counts(study: optuna.Study) -> Counter:
    """The study's trials by state name, counted by the database, confirmation runs (``CONFIRMS``)
    apart under ``confirming(state)``: the budget counts the search's trials. The budget asks this
    of every trial start, under its lock, and Optuna's own ``get_trials`` reads every running trial
    whole (with its params, attributes and reports) each time, which grows with the workers.
    Without the private names, counted from ``get_trials``."""
    backend = usable_rdb(storage_of(study))
    if backend is None:
        trials = study.get_trials(deepcopy=False)
        return Counter(confirming(t.state.name) if CONFIRMS in t.system_attrs else t.state.name for t in trials)
    table, attrs = _internals.models.TrialModel, _internals.models.TrialSystemAttributeModel
    marked = sqlalchemy.and_(attrs.trial_id == table.trial_id, attrs.key == CONFIRMS)
    search = attrs.key.is_(None)
    with _internals.scoped_session(backend.scoped_session) as session:
        rows = session.execute(
            sqlalchemy.select(table.state, search, sqlalchemy.func.count())
            .outerjoin(attrs, marked)
            .where(table.study_id == study_id(study, backend))
            .group_by(table.state, search)
        ).all()
    return Counter({state.name if plain else confirming(state.name): count for state, plain, count in rows})


def ask_confirmation(study: optuna.Study) -> optuna.Trial | None:
    """A queued confirmation run, taken as ``study.ask`` takes a queued trial (WAITING to RUNNING,
    which one worker wins); None where other workers took them all first. Without the private
    names, ``study.ask``, which takes the study's first queued trial (a confirmation run unless the
    search has one queued too)."""
    backend = usable_rdb(storage_of(study))
    if backend is None or not _private(study):
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        return study.ask() if any(CONFIRMS in t.system_attrs for t in waiting) else None
    return _take(study, _queued(study, backend, confirmations=True))


def confirmation_of(trial: optuna.Trial) -> dict[str, int] | None:
    """What a running trial confirms (``CONFIRMS``), or None for a trial of the search: read from the
    trial as Optuna's ``Trial`` read it when it was made, else asked of the storage."""
    frozen = getattr(trial, "_cached_frozen_trial", None)
    attrs = frozen.system_attrs if frozen is not None else trial.storage.get_trial_system_attrs(trial_id(trial))
    return attrs.get(CONFIRMS)


def ask(study: optuna.Study) -> optuna.Trial:
    """The next trial of the search: its first queued one (taken as ``study.ask`` takes it: WAITING
    to RUNNING, which one worker wins), else a new one the sampler fills. One small query lists the
    queued trials, where ``study.ask``'s look reads every unfinished trial whole (half a second at a
    thousand running trials, under the study's lock) and, in a new worker, every trial of the study."""
    backend = usable_rdb(storage_of(study))
    if backend is None or not _private(study):
        return study.ask()
    taken = _take(study, _queued(study, backend, confirmations=False))
    if taken is not None:
        return taken
    study._thread_local.cached_all_trials = None  # as study.ask does: the sampler reads the study afresh
    return optuna.Trial(study, study._storage.create_new_trial(study._study_id))


def _private(study: optuna.Study) -> bool:
    return all(hasattr(study, name) for name in ("_thread_local", "_storage", "_study_id"))


def _queued(study: optuna.Study, backend: optuna.storages.RDBStorage, confirmations: bool) -> list[int]:
    """The ids of the study's WAITING trials, by number: its confirmation runs (``CONFIRMS``), or the rest."""
    table, attrs = _internals.models.TrialModel, _internals.models.TrialSystemAttributeModel
    marked = sqlalchemy.and_(attrs.trial_id == table.trial_id, attrs.key == CONFIRMS)
    with _internals.scoped_session(backend.scoped_session) as session:
        return list(
            session.scalars(
                sqlalchemy.select(table.trial_id)
                .outerjoin(attrs, marked)
                .where(table.study_id == study_id(study, backend), table.state == TrialState.WAITING)
                .where(attrs.key.is_not(None) if confirmations else attrs.key.is_(None))
                .order_by(table.number)
            )
        )


def _take(study: optuna.Study, queued: list[int]) -> optuna.Trial | None:
    """The first of the ``queued`` trials this worker wins, as RUNNING; None where others took them all."""
    for key in queued:
        with contextlib.suppress(UpdateFinishedTrialError):  # taken and finished by another worker since
            if study._storage.set_trial_state_values(key, TrialState.RUNNING):
                _cached(study, key)
                study._thread_local.cached_all_trials = None  # as study.ask does: the sampler reads the study afresh
                return optuna.Trial(study, key)
    return None


def _cached(study: optuna.Study, key: int) -> None:
    """Optuna's cache in front of the RDB storage told of a trial taken from the queue, as its own
    read of the queued trials would: a trial's writes go through the cache's map of the trials it
    knows, and an unfinished one is read again at the cache's next read."""
    cache = storage_of(study)
    if not isinstance(cache, _internals.CachedStorage):
        return
    trial = cache._backend.get_trial(key)
    with cache._lock:
        cache._studies.setdefault(study._study_id, _internals.CachedStudy())
        cache._add_trials_to_cache(study._study_id, [trial])
        cache._studies[study._study_id].unfinished_trial_ids.add(key)


class _Finished:
    """A study's finished trials as one storage client last read them, by trial id, each with the
    time it finished (a trial id of a study deleted and made again may come back as another trial)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_id: dict[int, tuple[Any, optuna.trial.FrozenTrial]] = {}


class FinishedReads:
    """The finished trials each storage client has read, by study id. Kept for the life of the
    client (a weak key: it goes with its storage), since a finished trial never changes: a worker
    fetches each once, however many times it reads the study."""

    FETCH_ALL = 500  # more new finished trials than this: one read of them all, not a list of ids

    def __init__(self) -> None:
        self._clients: weakref.WeakKeyDictionary[optuna.storages.RDBStorage, dict[int, _Finished]] = (
            weakref.WeakKeyDictionary()
        )

    def read(self, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
        """``finished_trials``: one query lists the finished trials' ids and the time each finished,
        and only those this client has not read are fetched (lean)."""
        backend = usable_rdb(storage_of(study))
        if backend is None:
            return study.get_trials(deepcopy=False, states=FINISHED)
        study_key = study_id(study, backend)
        known = self._clients.setdefault(backend, {}).setdefault(study_key, _Finished())
        columns = _internals.models.TrialModel.__table__.c  # the model's datetimes are properties over these
        with known.lock:
            with _internals.scoped_session(backend.scoped_session) as session:
                rows = session.execute(
                    sqlalchemy.select(columns.trial_id, columns.datetime_complete).where(
                        columns.study_id == study_key, columns.state.in_(FINISHED)
                    )
                ).all()
            finished = dict(rows)
            known.by_id = {i: kept for i, kept in known.by_id.items() if finished.get(i, object()) == kept[0]}
            new = set(finished) - set(known.by_id)
            if new:
                some = known.by_id and len(new) <= self.FETCH_ALL
                fetched = _lean.read(backend, study_key, FINISHED, only=new if some else ())
                for trial in fetched:  # one that finished since the ids were listed waits for the next read
                    if trial._trial_id in finished:
                        known.by_id[trial._trial_id] = (finished[trial._trial_id], trial)
            return sorted((trial for _, trial in known.by_id.values()), key=lambda t: t.number)


_READS = FinishedReads()  # this process's: every storage client in it shares the one record


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's finished trials (complete, pruned, failed), by number, as Optuna's own
    ``FrozenTrial``, read lean (``_lean``: of the user attributes, only the artifact ids a worker
    removes): shared, not to be changed. Without the private names, Optuna's ``get_trials``."""
    return _READS.read(study)


def running_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's running trials, by number, read lean (``_lean``): their params and system
    attributes, which TPE's constant liar reads, and no user attributes. Without the private
    names, Optuna's ``get_trials``."""
    backend = usable_rdb(storage_of(study))
    if backend is None:
        return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return _lean.read(backend, study_id(study, backend), (TrialState.RUNNING,), keys=())
