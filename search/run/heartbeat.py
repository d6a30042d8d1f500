"""A running trial's heartbeat: the worker records one every ``heartbeat_interval`` seconds; a trial
without one for the grace period is failed by the next worker and its params are queued again
(``optuna.storages.fail_stale_trials`` with ``RetryHeartbeatStaleTrialCallback``).

Optuna sends heartbeats only inside ``study.optimize``; a worker here asks and tells itself, so it
sends them itself, through the storage's public ``record_heartbeat``, as Optuna's thread does.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import optuna

from search.store import STORAGE_ERRORS


@contextlib.contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial_id: int) -> Iterator[None]:
    """Heartbeats of trial ``trial_id`` while the block runs, the first at once; none where the
    storage has heartbeats off. A database that is away for a beat is tried again at the next."""
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(*STORAGE_ERRORS):
                storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
