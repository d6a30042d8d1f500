"""Where a study's data lives, by concern: the storage URL and database (``database``), the artifact
store (``artifacts``), the study-wide budget's lock (``budget``) and stop requests (``stops``).

What needs Optuna's private names sits in the ``_``-prefixed modules, one per purpose, and reaches
the rest of the project only through the names below: a trial's attributes in one transaction
(``_attrs``), trials whose worker stopped (``_stale``), the lighter reads a worker makes
(``_trials``, read lean by ``_lean``), a worker's one read per trial (``_snapshot``); ``_internals`` imports
Optuna's private modules and names what a release moved."""

from search.store._attrs import artifact_ids, set_user_attrs
from search.store._internals import FINISHED, study_id, trial_id
from search.store._snapshot import PerTrial, finished_after_trial
from search.store._stale import StaleTrial, fail_and_retry, fail_stale_trials, stale_trial_numbers
from search.store._trials import (
    CONFIRMS,
    ask,
    ask_confirmation,
    confirmation_of,
    confirming,
    trial_counts,
)
from search.store.artifacts import AtomicArtifactStore, artifact_dir, not_in_store, stored
from search.store.database import (
    STORAGE_ERRORS,
    StorageError,
    describe_db_error,
    is_sqlite,
    known_to_restart,
    load_existing,
    open_storage,
    redact,
    resolve_storage_url,
    restarting,
)
from search.store.stops import request_stop, stop_requests

__all__ = [
    "CONFIRMS",
    "ask_confirmation",
    "confirmation_of",
    "confirming",
    "FINISHED",
    "STORAGE_ERRORS",
    "AtomicArtifactStore",
    "PerTrial",
    "StaleTrial",
    "StorageError",
    "known_to_restart",
    "artifact_dir",
    "artifact_ids",
    "ask",
    "describe_db_error",
    "fail_and_retry",
    "fail_stale_trials",
    "finished_after_trial",
    "is_sqlite",
    "load_existing",
    "not_in_store",
    "open_storage",
    "redact",
    "request_stop",
    "resolve_storage_url",
    "restarting",
    "set_user_attrs",
    "stale_trial_numbers",
    "stop_requests",
    "stored",
    "study_id",
    "trial_counts",
    "trial_id",
]
