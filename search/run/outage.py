"""A database that went away (a restart, the network) while a worker runs: wait for it, a while."""

from __future__ import annotations

import time

from search.run.progress import Progress
from search.store import STORAGE_ERRORS, StorageError, describe_db_error


def storage_failure(error: BaseException) -> BaseException | None:
    """The database error behind ``error``, if any: the first raised that says something, where there
    are several. Optuna may re-raise it as something else (an assertion in its trial bookkeeping, or
    its own storage error, whose message only guesses at the cause) while the database is away."""
    found = []
    while error is not None:
        if isinstance(error, STORAGE_ERRORS):
            found.append(error)
        error = error.__context__
    saying = [e for e in found if describe_db_error(e).strip("() ")]
    return (saying or found or [None])[-1]


class StorageOutage:
    """A database that went away (restart, network): wait and try again, for a bounded time."""

    def __init__(self, progress: Progress, limit_seconds: float = 120.0) -> None:
        self.progress = progress
        self.limit = limit_seconds
        self.since: float | None = None

    def wait(self, error: Exception) -> None:
        now = time.monotonic()
        self.since = self.since or now
        first = describe_db_error(error)
        if now - self.since > self.limit:
            raise StorageError(f"storage unreachable for {self.limit:.0f} s: {first}") from None
        self.progress.line(f"storage error ({first}); retrying")
        time.sleep(min(5.0, 0.5 + now - self.since))

    def over(self) -> None:
        self.since = None
