"""What this package uses of Optuna's private modules and attributes, in one place: imported here,
each use with a fallback to Optuna's public API (in the modules of this package that need it).

Optuna is not pinned, and a release may move what is private. ``MISSING`` names what this Optuna
lacks; the fallbacks then run (a trial's attributes one commit each, no list of stale trials, ids
looked up by name, checkpoints uploaded by Optuna's own ``upload_artifact``), and
``tests/search/store/test_internals.py`` fails, saying what moved. Only ``search/store/`` imports
these modules (their names start with ``_``); the rest of the project asks ``search.store``.
"""

from __future__ import annotations

import optuna

MISSING: list[str] = []
try:
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session as scoped_session
except ImportError as error:
    models = scoped_session = None
    MISSING.append(f"optuna.storages._rdb ({error})")
try:
    from optuna.storages._cached_storage import _CachedStorage as CachedStorage
    from optuna.storages._cached_storage import _StudyInfo as CachedStudy
except ImportError as error:
    CachedStorage = CachedStudy = None
    MISSING.append(f"optuna.storages._cached_storage ({error})")
try:
    from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX
except ImportError as error:
    ARTIFACTS_ATTR_PREFIX = None
    MISSING.append(f"optuna.artifacts._upload.ARTIFACTS_ATTR_PREFIX ({error})")
if not hasattr(optuna.storages.RDBStorage, "_set_trial_attr_without_commit"):
    MISSING.append("RDBStorage._set_trial_attr_without_commit")
if CachedStorage is not None and not hasattr(CachedStorage, "_add_trials_to_cache"):
    MISSING.append("_CachedStorage._add_trials_to_cache")

TrialState = optuna.trial.TrialState
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def rdb_storage(storage: optuna.storages.BaseStorage | None) -> optuna.storages.RDBStorage | None:
    """The RDB storage behind ``storage`` (Optuna puts a cache in front of one), or None."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def usable_rdb(storage: optuna.storages.BaseStorage | None) -> optuna.storages.RDBStorage | None:
    """``rdb_storage``, where this Optuna has every private name the faster paths use; else None
    (the caller then takes Optuna's public API)."""
    return None if MISSING else rdb_storage(storage)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage | None:
    """The storage a study reads and writes (kept privately; None where this Optuna moved it)."""
    return getattr(study, "_storage", None)


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
