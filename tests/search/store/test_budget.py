"""The study-wide budget and its lock, on SQLite's lock file and PostgreSQL's advisory lock, directly
and through PgBouncer."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import optuna
import pytest
import sqlalchemy

from search.store.budget import Next, TrialGate, next_step
from tests.conftest import TINY, search_here


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({}, Next.START),
        ({"COMPLETE": 2, "PRUNED": 1, "FAIL": 5}, Next.START),  # a failed trial does not use the budget
        ({"COMPLETE": 2, "RUNNING": 2}, Next.WAIT),  # the last ones run: one of them may still fail
        ({"COMPLETE": 3, "PRUNED": 1, "RUNNING": 1}, Next.DONE),
        ({"COMPLETE": 5, "WAITING": 2}, Next.DONE),  # queued trials left over do not extend it
        # confirmation runs: outside the budget, started once the search has no trial left to start
        ({"COMPLETE": 2, "confirmation WAITING": 1}, Next.START),
        ({"COMPLETE": 2, "RUNNING": 2, "confirmation WAITING": 1}, Next.CONFIRM),
        ({"COMPLETE": 4, "confirmation WAITING": 2, "confirmation COMPLETE": 9}, Next.CONFIRM),
        ({"COMPLETE": 4, "confirmation RUNNING": 1}, Next.WAIT),  # it may still fail, and be queued again
        ({"COMPLETE": 4, "confirmation COMPLETE": 6, "confirmation FAIL": 1}, Next.DONE),
    ],
)
def test_the_budget_counts_finished_and_running_trials(counts, expected):
    assert next_step(Counter(counts), 4) is expected


@pytest.fixture(params=["sqlite", "postgresql", "pgbouncer"])
def url(request, tmp_path) -> str:
    if request.param == "pgbouncer":  # transaction pooling: the lock lives in a transaction kept open
        return request.getfixturevalue("bouncer_url")
    return f"sqlite:///{tmp_path}/studies.db" if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def test_the_gate_lets_one_worker_through_at_a_time_and_release_is_idempotent(url):
    name = f"gate-{uuid.uuid4().hex[:8]}"
    first, second = TrialGate(url, name), TrialGate(url, name)
    first.acquire()
    first.acquire()  # held already: no second lock, no deadlock
    entered = threading.Event()

    def other_worker() -> None:
        second.acquire()
        entered.set()
        second.release()

    waiting = threading.Thread(target=other_worker)
    waiting.start()
    time.sleep(0.5)
    assert not entered.is_set()  # the other worker waits while the first decides
    first.release()
    first.release()  # released already: nothing happens
    assert entered.wait(10)
    waiting.join()
    TrialGate(url, f"other-{name}").acquire()  # another study's gate is another lock


def test_a_lock_whose_connection_was_cut_is_known_to_be_lost(postgres_url, bouncer_url):
    """A server that ends the lock's transaction (a restart, PgBouncer's idle_transaction_timeout)
    ends the lock without a word: the worker asks before it lets the lock go."""
    for url in (postgres_url, bouncer_url):
        gate = TrialGate(url, f"cut-{uuid.uuid4().hex[:8]}")
        gate.acquire()
        assert gate.still_held()
        backend = gate._held.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar()
        with sqlalchemy.create_engine(postgres_url).connect() as admin:
            admin.execute(sqlalchemy.text("SELECT pg_terminate_backend(:p)"), {"p": backend})
        assert not gate.still_held()
        gate.release()  # a broken connection: released all the same, and the next acquire gets a new one
        gate.acquire()
        assert gate.still_held()
        gate.release()


@pytest.mark.parametrize("through", ["postgresql", "pgbouncer"])
def test_a_worker_waiting_for_the_lock_gives_up_when_told(through, request):
    """A run's timeout or a stop ends the wait for a lock another worker holds (forever, before)."""
    url = request.getfixturevalue("postgres_url" if through == "postgresql" else "bouncer_url")
    name = f"wait-{uuid.uuid4().hex[:8]}"
    holder, waiter = TrialGate(url, name), TrialGate(url, name)
    asked = []
    try:
        assert holder.acquire()
        assert not waiter.acquire(give_up=lambda: asked.append(1) or len(asked) >= 3)
        assert len(asked) == 3 and not waiter.still_held()
        holder.release()
        assert waiter.acquire(give_up=lambda: True)  # free: taken at once, whatever give_up would say
    finally:
        holder.close()
        waiter.close()


@pytest.mark.slow
def test_a_run_waiting_for_the_budgets_lock_ends_at_its_timeout(tmp_path, postgres_url):
    name = f"held-{uuid.uuid4().hex[:8]}"
    env = {"SEARCH_HOME": str(tmp_path), "SEARCH_STORAGE": postgres_url}
    args = ["run", "--study", "lr-sweep", *TINY, "--set", f"name={name}", "--set", "enqueue=[]"]
    assert search_here(*args, "--n-trials", "1", env=env).returncode == 0  # the study, made
    holder = TrialGate(postgres_url, name)  # as a worker stuck while it holds the lock
    try:
        assert holder.acquire()
        started = time.monotonic()
        run = search_here(*args, "--n-trials", "2", "--timeout", "3", env=env)
        assert run.returncode == 0 and time.monotonic() - started < 120, run.stderr
    finally:
        holder.close()
        optuna.delete_study(study_name=name, storage=postgres_url)
