"""Where studies live: a storage URL (SQLite by default, PostgreSQL for many workers) and Optuna's
RDB storage on it, with heartbeats on. Optuna's own tables are the only database."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from training import ConfigError, SearchServiceError, make_folder


class StorageError(SearchServiceError):
    """The storage cannot be reached or used (exit code 1)."""


# A worker's connections to a database server, at most: its storage's pool (the trial's own work,
# the heartbeat thread, the thread that writes the trials' notes) and, while a trial starts, the
# budget's lock. Workers × CONNECTIONS_PER_WORKER must stay under the server's max_connections.
STORAGE_POOL = 3
CONNECTIONS_PER_WORKER = STORAGE_POOL + 1

# What a database that went away raises, directly or through Optuna.
STORAGE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)


def describe_db_error(error: BaseException) -> str:
    """The first line of the driver's message (SQLAlchemy wraps it with SQL and a link), and what to
    do where the server refused the connection for its limit."""
    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    first = lines[0] if lines else type(error).__name__
    limit = refused_for_limit(first)
    return f"{first}; {limit}" if limit else first


def search_home() -> Path:
    """``$SEARCH_HOME``, default ``./.search``: the SQLite file and the artifact folder live here."""
    return Path(os.environ.get("SEARCH_HOME", ".search"))


def resolve_storage_url(given: str | None) -> str:
    """``--storage``, else ``$SEARCH_STORAGE``, else the SQLite file in ``search_home()``."""
    url = given or os.environ.get("SEARCH_STORAGE") or f"sqlite:///{search_home() / 'studies.db'}"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"storage URL '{redact(url)}' is malformed; use e.g. sqlite:///studies.db or "
            "postgresql+psycopg2://user@host:5432/db"
        ) from None
    if parsed.drivername.startswith("sqlite") and parsed.database:
        instead = "set SEARCH_HOME or --storage to a place that can be written"
        make_folder(Path(parsed.database).parent, "the folder of the SQLite file", instead)
    return url


def redact(url: str) -> str:
    """The URL with its password replaced by ***, for every message and log line."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        # Not parseable: hide anything between ':' and '@' after the scheme.
        scheme, sep, rest = url.partition("://")
        if "@" in rest and ":" in rest.split("@")[0]:
            user = rest.split("@")[0].split(":")[0]
            rest = f"{user}:***@{rest.split('@', 1)[1]}"
        return f"{scheme}{sep}{rest}"


def is_sqlite(url: str) -> bool:
    return make_url(url).drivername.startswith("sqlite")


def engine_kwargs(url: str) -> dict:
    """SQLAlchemy's engine options for ``url``: SQLite waits for its write lock; a server's connection
    is checked before use (a restarted database) and gives up connecting after 10 s."""
    if is_sqlite(url):
        # Wait for the write lock instead of failing with "database is locked".
        return {"connect_args": {"timeout": 120}}
    driver = make_url(url).drivername
    # named in pg_stat_activity, so that a DBA sees whose connections they are
    connect_args = {"connect_timeout": 10, "application_name": "search"} if driver.startswith("postgresql") else {}
    return {"pool_pre_ping": True, "connect_args": connect_args}


def refused_for_limit(message: str) -> str | None:
    """What to do where a connection was refused for a limit (PostgreSQL's max_connections, a role's
    limit, PgBouncer's max_client_conn), or None for another error."""
    if "too many clients" in message or "remaining connection slots are reserved" in message:
        limit = "the server's max_connections"
    elif "too many connections for role" in message:
        limit = "the role's connection limit"
    elif "max_client_conn" in message:
        return (
            f"PgBouncer's max_client_conn is reached (each worker holds up to {CONNECTIONS_PER_WORKER} connections): "
            "run fewer workers or raise max_client_conn in pgbouncer.ini (see docs/storage.md)"
        )
    else:
        return None
    return (
        f"{limit} is reached (each worker holds up to {CONNECTIONS_PER_WORKER} connections): run fewer "
        "workers, raise the limit, or put PgBouncer in front of the server (see docs/storage.md)"
    )


# What a server that is restarting answers: worth waiting for, unlike a wrong password or database.
# PostgreSQL's own: "the database system is starting up", "... is not yet accepting connections",
# "... is shutting down", "... is in recovery mode".
RESTARTING = ("connection refused", "the database system is", "server closed the connection", "terminating connection")


def restarting(error: BaseException | None) -> bool:
    """Whether ``error``, or an error it was raised from, is what a restarting server answers."""
    return any(sign in _messages(error) for sign in RESTARTING)


# What the database answers a worker that makes Optuna's tables while another one does: they are
# there (PostgreSQL's words, then SQLite's).
MADE_AT_ONCE = ("already exists", "duplicate key value violates unique constraint", "UNIQUE constraint failed")
# Tries for each: on a loaded machine, one that lost the race can find the tables half made again
# (SQLite, 8 workers at once, 2 cores busy: 4 tries were not always enough).
MADE_AT_ONCE_TRIES = 10


_ANSWERED: set[str] = set()  # the storages that opened in this process
# What says the server is there, though it refuses for now: PostgreSQL while it starts or stops.
THERE_BUT_RESTARTING = "the database system is"


def answered(url: str) -> bool:
    """Whether the storage at ``url`` has opened in this process, or from this ``$SEARCH_HOME``
    before (a worker started again during a restart): a refusal since is an outage, not a wrong
    host or port."""
    return url in _ANSWERED or _digest(url) in _remembered()


def known_to_restart(url: str, error: BaseException) -> bool:
    """Whether a refusal of the storage at ``url`` is a restart, to wait out: it answered before,
    or its server says it is starting or stopping."""
    return answered(url) or restarting(error) and THERE_BUT_RESTARTING in _messages(error)


def _messages(error: BaseException | None) -> str:
    said = []
    while error is not None:
        said.append(str(error).lower())
        error = error.__cause__ or error.__context__
    return " ".join(said)


def _digest(url: str) -> str:
    return hashlib.sha256(redact(url).encode()).hexdigest()  # nothing of a password: its URL without it


def _remembered() -> set[str]:
    try:
        return set((search_home() / ANSWERED_FILE).read_text().split())
    except OSError:
        return set()


def _remember(url: str) -> None:
    """``url`` noted as answered, in this process and in ``$SEARCH_HOME`` where it can be written
    (a place that cannot be written only costs a later start's wait)."""
    _ANSWERED.add(url)
    if _digest(url) not in _remembered():
        with contextlib.suppress(OSError), open(search_home() / ANSWERED_FILE, "a") as known:
            known.write(_digest(url) + "\n")


# in $SEARCH_HOME: a SHA-256 of each storage URL (its password left out) that opened from here
ANSWERED_FILE = "storages-answered"


def open_storage(
    url: str,
    heartbeat_interval: int = 10,
    grace_period: int = 30,
    wait: float = 0,
    say: Callable[[str], None] = print,
    *,
    wait_if_never_answered: bool = True,
    pool: int = STORAGE_POOL,
) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats on: a killed worker's trial turns FAIL and is retried. A server
    that refuses connections or says it is starting or stopping (a restart) is tried again for up to
    ``wait`` seconds (a worker's start), saying so once, so that a restart does not end the workers
    starting then; without ``wait_if_never_answered``, only where it answered before (``answered``)
    or says it restarts (a wrong host or port is one line at once). Workers that start at once on a
    new database all make Optuna's tables, and the server refuses all but one: the others open it
    again, now that the tables are there. ``pool``: a server's connections it keeps (a worker's
    ``STORAGE_POOL``; the dashboard serves several requests at once)."""
    deadline, said, tries = time.monotonic() + wait, False, 0
    while True:
        try:
            storage = _open_storage(url, heartbeat_interval, grace_period, pool)
            _remember(url)
            return storage
        except StorageError as error:
            tries += 1
            if tries <= MADE_AT_ONCE_TRIES and any(sign in str(error) for sign in MADE_AT_ONCE):
                time.sleep(0.05 * tries)  # the one that made them may not have committed yet: let it
                continue
            never = not (wait_if_never_answered or known_to_restart(url, error))
            if never or time.monotonic() >= deadline or not restarting(error):
                if never and restarting(error):
                    raise StorageError(f"{error}; check the host and port of the storage URL, and that its server "
                                       "runs") from None  # fmt: skip
                raise
            if not said:
                say(f"{error}: trying again for up to {wait:.0f} s (a restarting server)")
                said = True
            time.sleep(1.0)


def _open_storage(url: str, heartbeat_interval: int, grace_period: int, pool: int) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are marked experimental
        try:
            pooled = {} if is_sqlite(url) else {"pool_size": pool, "max_overflow": 0, "pool_timeout": 60}
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs(url) | pooled,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
                skip_compatibility_check=True,  # checked below, on one connection
            )
            check_schema(storage, url)
            if is_sqlite(url):
                _write_ahead_log(storage.engine)
            return storage
        except ImportError:
            raise StorageError(f"cannot open storage {redact(url)}: {_no_driver(url)}") from None
        except (sqlalchemy.exc.SQLAlchemyError, ValueError, RuntimeError) as error:
            raise StorageError(f"cannot open storage {redact(url)}: {describe_db_error(error)}") from None


def _no_driver(url: str) -> str:
    """What to do where the URL's database driver is not installed (for a bare ``postgresql://``,
    SQLAlchemy's default driver, which this project does not install)."""
    driver = make_url(url).drivername
    if driver.startswith("postgresql"):
        return (f"the driver of {driver}:// is not installed; name psycopg2, which the postgres extra installs: "
                "postgresql+psycopg2://user@host:5432/db (pip install -e '.[postgres]')")  # fmt: skip
    return f"the driver of {driver}:// is not installed; install it, or name an installed one in the URL"


def check_schema(storage: optuna.storages.RDBStorage, url: str) -> None:
    """That this Optuna reads the tables' schema. Optuna's own check keeps a transaction open on one
    connection while it reads the version on a second. Through PgBouncer's transaction pooling,
    workers that start together then take every server connection with their first and wait for
    ever for their second, until PgBouncer cuts them. Here each read is a connection of its own."""
    current, head = storage.get_current_version(), storage.get_head_version()
    if current == head:
        return
    if current in storage.get_all_versions():
        todo = f"upgrade them with `optuna storage upgrade --storage {redact(url)}`"
    else:
        todo = "install the newer optuna that made them"
    this = optuna.version.__version__
    raise RuntimeError(f"the tables are Optuna schema {current}, and optuna {this} reads {head}: {todo}")


def _write_ahead_log(engine: sqlalchemy.engine.Engine) -> None:
    """SQLite in WAL mode: readers (the dashboard, status) never block the workers' writes, and a
    commit costs one append instead of a journal round-trip. WAL keeps every committed
    transaction through a crash of the process; ``synchronous=NORMAL`` is its documented pairing."""

    def on_connect(connection, record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections opened before the listener reconnect with it
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")  # persistent: stored in the file


def load_existing(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """A study that must already exist; a clear error listing the ones that do."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"no study '{name}' in this storage; {hint}studies here: {names}") from None
