"""Where a study's data lives, by concern: the storage URL and database (``database``), Optuna's
private names in one place (``optuna_private``), the artifact store (``artifacts``), the study-wide
budget's lock (``budget``) and stop requests (``stops``)."""

from search.store.artifacts import AtomicArtifactStore, artifact_dir, not_in_store, stored
from search.store.database import (
    STORAGE_ERRORS,
    StorageError,
    describe_db_error,
    is_sqlite,
    load_existing,
    open_storage,
    redact,
    resolve_storage_url,
    restarting,
)
from search.store.optuna_private import set_user_attrs, stale_trial_numbers
from search.store.stops import request_stop, stop_requests

__all__ = [
    "STORAGE_ERRORS",
    "AtomicArtifactStore",
    "StorageError",
    "artifact_dir",
    "describe_db_error",
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
]
