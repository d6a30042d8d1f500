"""The storage on the real PostgreSQL server: a bounded number of connections per worker, named in
pg_stat_activity, and a connection refused for a limit said in one line that names the limit."""

from __future__ import annotations

import contextlib
import gc
import threading
import time

import optuna
import psycopg2
import pytest
import sqlalchemy

from search.store import StorageError, open_storage
from search.store.database import CONNECTIONS_PER_WORKER, STORAGE_POOL
from tests.conftest import pgbouncer, postgres_here, search_here
from tests.machine import require


def _connect(url: str, user: str = "postgres"):
    """A plain psycopg2 connection to ``url``'s server and database, as ``user``."""
    parsed = sqlalchemy.engine.make_url(url)
    return psycopg2.connect(host=parsed.host, port=parsed.port, dbname=parsed.database, user=user)


def _ours(url: str) -> int:
    with contextlib.closing(_connect(url)) as db, db.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'search'")
        return cursor.fetchone()[0]


def test_a_workers_storage_holds_a_bounded_pool_however_many_threads_use_it(postgres_url):
    gc.collect()  # earlier tests' storages, not yet collected, close their connections now, not while counting
    storage = open_storage(postgres_url)
    assert (storage.engine.pool.size(), storage.engine.pool._max_overflow) == (STORAGE_POOL, 0)
    before, most, stop = _ours(postgres_url), [0], threading.Event()

    def use() -> None:
        while not stop.is_set():
            optuna.get_all_study_summaries(storage, include_best_trial=True)

    threads = [threading.Thread(target=use) for _ in range(8)]  # more threads than the pool: they wait their turn
    for thread in threads:
        thread.start()
    for _ in range(20):
        most[0] = max(most[0], _ours(postgres_url) - before)
    stop.set()
    for thread in threads:
        thread.join()
    assert 1 <= most[0] <= STORAGE_POOL
    storage.engine.dispose()


@pytest.fixture
def server_of_its_own():
    """A PostgreSQL server that only this test uses: nobody else takes or frees a connection."""
    with postgres_here(durable=False) as server:
        yield server


def test_a_connection_refused_for_a_limit_is_one_line_naming_the_limit(server_of_its_own):
    url, port = server_of_its_own.url, server_of_its_own.port
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as db:
        db.exec_driver_sql("CREATE ROLE search_limited LOGIN CONNECTION LIMIT 1")
    limited = url.replace("://postgres@", "://search_limited@")
    held = [_connect(url, "search_limited")]
    try:
        run = search_here("status", "--study", "x", "--storage", limited)
        assert run.returncode == 1 and run.stderr.strip().splitlines() == [
            f'search: error: cannot open storage {limited}: connection to server at "127.0.0.1", port {port} failed: '
            'FATAL:  too many connections for role "search_limited"; the role\'s connection limit is reached (each '
            f"worker holds up to {CONNECTIONS_PER_WORKER} connections): run fewer workers, raise the limit, or put "
            "PgBouncer in front of the server (see docs/storage.md)"
        ]
        # the server's own limit: every slot taken, as by too many workers
        with contextlib.suppress(psycopg2.OperationalError):
            while True:
                held.append(_connect(url))
        run = search_here("status", "--study", "x", "--storage", url)
        assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1
        assert (
            "too many clients already; the server's max_connections is reached (each worker holds up to" in run.stderr
        )
    finally:
        for connection in held:
            connection.close()
        admin.dispose()


def test_pgbouncers_client_limit_is_one_line_naming_it(postgres_url):
    require("pgbouncer")
    with pgbouncer(postgres_url, max_client_conn=1) as url:
        held = psycopg2.connect(url.replace("postgresql+psycopg2", "postgresql"))
        try:
            run = search_here("status", "--study", "x", "--storage", url)
        finally:
            held.close()
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "no more connections allowed (max_client_conn); PgBouncer's max_client_conn is reached" in run.stderr
    assert "raise max_client_conn in pgbouncer.ini" in run.stderr


@pytest.mark.parametrize(
    ("answers", "said"),
    [
        (["FATAL:  the database system is starting up"], 1),  # a restart: waited for, said once
        (["connection refused", "FATAL:  the database system is not yet accepting connections"], 1),
        (['duplicate key value violates unique constraint "alembic_version_pkc"'], 0),  # another worker made the tables
    ],
)
def test_a_starting_worker_waits_for_a_restarting_server_and_opens_again_after_a_race_for_the_tables(
    tmp_path, monkeypatch, answers, said
):
    from search.store import database

    real, refusals, lines = database._open_storage, list(answers), []

    def opening(*args):
        if refusals:
            raise StorageError(f"cannot open storage x: {refusals.pop(0)}")
        return real(*args)

    monkeypatch.setattr(database, "_open_storage", opening)
    monkeypatch.setattr(database.time, "sleep", lambda seconds: None)
    assert database.open_storage(f"sqlite:///{tmp_path}/s.db", wait=60, say=lines.append) is not None
    assert len(lines) == said and not refusals


def test_workers_opening_a_new_sqlite_file_at_once_all_open_it(tmp_path):
    """SQLite refuses all but one of the workers that make Optuna's tables at once (``UNIQUE
    constraint failed: alembic_version.version_num``): the others open the file again."""
    url, start, errors = f"sqlite:///{tmp_path}/new.db", threading.Barrier(8), []

    def open_one() -> None:
        start.wait()
        try:
            open_storage(url).engine.dispose()
        except StorageError as error:
            errors.append(str(error))

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]


def test_a_wrong_password_is_not_waited_for(monkeypatch):
    from search.store import database

    calls = []

    def opening(*args):
        calls.append(1)
        raise StorageError('cannot open storage x: FATAL:  password authentication failed for user "search"')

    monkeypatch.setattr(database, "_open_storage", opening)
    with pytest.raises(StorageError, match="password authentication failed"):
        database.open_storage("postgresql+psycopg2://search@127.0.0.1/test", wait=60, say=print)
    assert len(calls) == 1


def test_workers_opening_together_through_pgbouncer_share_its_few_server_connections(postgres_url):
    """Optuna's own schema check keeps one connection in a transaction while it reads on a second:
    through transaction pooling, as many workers opening at once as the pool's server connections
    took them all and waited for their second until PgBouncer cut them. Each read is on its own now."""
    require("pgbouncer")
    with pgbouncer(postgres_url, default_pool_size=2, reserve_pool_size=0, idle_transaction_timeout=20) as url:
        open_storage(url).engine.dispose()  # the tables exist, as for workers joining a study
        opened, errors, start = [], [], threading.Barrier(12)

        def open_one() -> None:
            start.wait()
            try:
                storage = open_storage(url)
                opened.append(time.monotonic())
                storage.engine.dispose()
            except StorageError as error:
                errors.append(str(error))

        began = time.monotonic()
        threads = [threading.Thread(target=open_one) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors and len(opened) == 12
    assert max(opened) - began < 15, "opening waited for PgBouncer's idle_transaction_timeout"


@pytest.mark.parametrize(
    ("revision", "todo"),
    [("v3.0.0.a", "upgrade them with `optuna storage upgrade --storage sqlite:///"), ("v99.0.0", "install the newer")],
)
def test_tables_of_another_optuna_schema_are_one_line_saying_what_to_do(tmp_path, revision, todo):
    url = f"sqlite:///{tmp_path}/old.db"
    open_storage(url).engine.dispose()
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as db:
        db.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{revision}'")
    engine.dispose()
    run = search_here("status", "--study", "x", "--storage", url)
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert f"the tables are Optuna schema {revision}, and optuna {optuna.__version__} reads" in run.stderr
    assert todo in run.stderr
