"""The study-wide budget: ``n_trials`` finished trials for the whole study, whoever runs it. A worker
starts a trial only while finished and running trials are below it, deciding under a lock that
every worker of the study shares (``TrialGate``)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections import Counter
from enum import Enum

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from search.store.database import engine_kwargs


class Next(Enum):
    """What the budget says a worker does next."""

    START = "start"  # a trial is left to start
    WAIT = "wait"  # the rest is running: wait in case one of them fails
    DONE = "done"  # the study has all its finished trials


def state_counts(study: optuna.Study) -> Counter:
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def next_step(counts: Counter, n_trials: int) -> Next:
    """Whether a trial is left to start, given the study's trials by state."""
    finished = counts["COMPLETE"] + counts["PRUNED"]
    if finished >= n_trials:
        return Next.DONE
    return Next.WAIT if finished + counts["RUNNING"] >= n_trials else Next.START


class TrialGate:
    """A lock shared by every worker of a study, held from "may I start a trial?" until it started.

    Counting the finished and running trials and creating the next one must be one step, or two
    workers could both take the last trial. PostgreSQL: an advisory lock on its own connection;
    SQLite: a file lock beside the database file. Other databases fall back to no lock.
    """

    def __init__(self, url: str, study_name: str) -> None:
        self.url = url
        self.key = int.from_bytes(hashlib.sha1(study_name.encode()).digest()[:8], "big", signed=True)
        self.driver = make_url(url).drivername
        self._held: object | None = None
        self._engine = None
        if self.driver.startswith("postgresql"):
            self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **engine_kwargs(url))

    def acquire(self) -> None:
        if self._held is not None:
            return
        if self._engine is not None:
            connection = self._engine.connect()
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            self._held = connection
        elif self.driver.startswith("sqlite") and make_url(self.url).database:
            handle = open(f"{make_url(self.url).database}.lock", "a")  # noqa: SIM115 - held until release
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._held = handle
        else:
            self._held = True

    def release(self) -> None:
        """Idempotent: released as soon as the trial exists, and again when the step ends, to be sure."""
        held, self._held = self._held, None
        if held is None or held is True:
            return
        if isinstance(held, sqlalchemy.engine.Connection):
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                held.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            held.close()
        else:
            fcntl.flock(held, fcntl.LOCK_UN)
            held.close()
