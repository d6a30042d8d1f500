"""The study-wide budget: ``n_trials`` finished trials for the whole study, whoever runs it. A worker
starts a trial only while finished and running trials are below it, deciding under a lock that
every worker of the study shares (``TrialGate``)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from enum import Enum

import sqlalchemy
from sqlalchemy.engine import make_url

from search.store._trials import confirming
from search.store.database import engine_kwargs

# Seconds between tries of a lock another worker holds: random up to a bound that doubles, to this.
# Each try is a transaction on the server: a thousand workers starting at once, each trying twice a
# second, would be 2,000 transactions a second that start nothing, and would slow the one that does.
FIRST_PAUSE, MAX_PAUSE = 0.02, 2.0
TRY_LOCK = "SELECT pg_try_advisory_xact_lock(:k)"


class Next(Enum):
    """What the budget says a worker does next."""

    START = "start"  # a trial is left to start
    CONFIRM = "confirm"  # a queued confirmation run (outside the budget) is left to start
    WAIT = "wait"  # the rest is running: wait in case one of them fails
    DONE = "done"  # the study has all its finished trials and confirmation runs


def next_step(counts: Counter, n_trials: int) -> Next:
    """Whether a trial is left to start, given the study's trials by state (``trial_counts``):
    the search's while it has budget left, then the queued confirmation runs, which it does not count."""
    finished = counts["COMPLETE"] + counts["PRUNED"]
    if finished + counts["RUNNING"] < n_trials:
        return Next.START
    if counts[confirming("WAITING")]:
        return Next.CONFIRM
    if finished < n_trials or counts[confirming("RUNNING")]:
        return Next.WAIT
    return Next.DONE


class TrialGate:
    """A lock shared by every worker of a study, held from "may I start a trial?" until it started.

    Counting the finished and running trials and creating the next one must be one step, or two
    workers could both take the last trial. SQLite: a file lock beside the database file. PostgreSQL:
    an advisory lock of a transaction kept open on a connection of its own, so that it holds through
    PgBouncer's transaction pooling too (a session's lock would stay on a server connection that
    PgBouncer hands to another client). It is tried, not waited for: a worker waiting on the server
    would keep one of PgBouncer's few server connections from the worker that holds the lock and
    needs one to start its trial. Other databases fall back to no lock.
    """

    def __init__(self, url: str, study_name: str) -> None:
        self.url = url
        self.key = int.from_bytes(hashlib.sha1(study_name.encode()).digest()[:8], "big", signed=True)
        self.driver = make_url(url).drivername
        self._held: object | None = None
        self._engine = None
        if self.driver.startswith("postgresql"):
            # one connection, kept: through PgBouncer an idle one holds no server connection, and a
            # login per trial start (a SCRAM hash at PgBouncer) is saved; the pool's reset on return
            # rolls back, and a broken connection is replaced at the next acquire
            self._engine = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0, **engine_kwargs(url))

    def acquire(self, give_up: Callable[[], bool] | None = None) -> bool:
        """Whether the lock is held now: False where ``give_up()`` said so while another worker held
        it (a run's timeout, a stop asked for), asked between tries."""
        if self._held is not None:
            return True
        if self._engine is not None:
            self._held = self._transaction_lock(give_up)
            return self._held is not None
        if self.driver.startswith("sqlite") and make_url(self.url).database:
            handle = open(f"{make_url(self.url).database}.lock", "a")  # noqa: SIM115 - held until release
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._held = handle
        else:
            self._held = True
        return True

    def _transaction_lock(self, give_up: Callable[[], bool] | None) -> sqlalchemy.engine.Connection | None:
        """The study's advisory lock, taken in a transaction left open on a connection of its own;
        tried again after a random pause that grows to ``MAX_PAUSE`` while another worker holds it,
        unless ``give_up()`` (None then)."""
        connection = self._engine.connect()
        try:
            pause = FIRST_PAUSE
            while not connection.execute(sqlalchemy.text(TRY_LOCK), {"k": self.key}).scalar():
                connection.rollback()  # no transaction held open while waiting
                if give_up is not None and give_up():
                    connection.close()
                    return None
                time.sleep(random.uniform(0, pause))
                pause = min(pause * 2, MAX_PAUSE)
        except BaseException:
            connection.close()
            raise
        return connection

    def still_held(self) -> bool:
        """Whether this worker still holds the lock: a transaction cut under it (PgBouncer's
        idle_transaction_timeout, a restarted server or PgBouncer) ends it without a word, and
        another worker may have taken it since. Asked before the lock is let go."""
        if not isinstance(self._held, sqlalchemy.engine.Connection):
            return self._held is not None
        try:  # taken again in the same transaction: true while it is still held there
            return bool(self._held.execute(sqlalchemy.text(TRY_LOCK), {"k": self.key}).scalar())
        except sqlalchemy.exc.SQLAlchemyError:
            return False

    def close(self) -> None:
        """The lock let go, and the gate's connection closed."""
        self.release()
        if self._engine is not None:
            self._engine.dispose()

    @classmethod
    @contextlib.contextmanager
    def held(cls, url: str, study_name: str) -> Iterator[None]:
        """The study's lock for a short step of a worker's own (recording what every worker must
        agree on), then let go with its connection."""
        gate = cls(url, study_name)
        try:
            gate.acquire()
            yield
        finally:
            gate.close()

    def release(self) -> None:
        """Idempotent: released as soon as the trial exists, and again when the step ends, to be sure."""
        held, self._held = self._held, None
        if held is None or held is True:
            return
        if isinstance(held, sqlalchemy.engine.Connection):
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                held.rollback()  # the transaction ends, and its lock with it
            held.close()
        else:
            fcntl.flock(held, fcntl.LOCK_UN)
            held.close()
