"""Where studies live: an SQLAlchemy URL (SQLite by default), heartbeats, the artifact store.

Optuna's own tables are the only database; checkpoints go to Optuna's artifact store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mimetypes
import os
import sqlite3
import tempfile
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import optuna
import sqlalchemy
import sqlalchemy.dialects.postgresql
import sqlalchemy.dialects.sqlite
from optuna.artifacts import FileSystemArtifactStore
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from training.errors import ConfigError, DiskError, SearchServiceError
from training.files import make_folder, make_readable


class StorageError(SearchServiceError):
    """The storage cannot be reached or used (exit code 1)."""


CHECKPOINT_ATTR = "checkpoint_artifact"  # the user attribute naming a trial's checkpoint in the artifact store
STOP_ATTR = "stop_requests"  # the study user attribute `search stop` counts up
# What a database that went away raises, directly or through Optuna.
STORAGE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)


def describe_db_error(error: BaseException) -> str:
    """The first line of the driver's message (SQLAlchemy wraps it with SQL and a link)."""
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]


def search_home() -> Path:
    """``$SEARCH_HOME``, default ``./.search``: the SQLite file and the artifact folder live here."""
    return Path(os.environ.get("SEARCH_HOME", ".search"))


def default_storage_url() -> str:
    return f"sqlite:///{search_home() / 'studies.db'}"


def resolve_storage_url(given: str | None) -> str:
    """``--storage``, else ``$SEARCH_STORAGE``, else the SQLite file in ``search_home()``."""
    url = given or os.environ.get("SEARCH_STORAGE") or default_storage_url()
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


def _engine_kwargs(url: str) -> dict:
    if is_sqlite(url):
        # Wait for the write lock instead of failing with "database is locked".
        return {"connect_args": {"timeout": 120}}
    driver = make_url(url).drivername
    connect_args = {"connect_timeout": 10} if driver.startswith("postgresql") else {}
    return {"pool_pre_ping": True, "connect_args": connect_args}


try:  # Optuna internals (not pinned): without them a trial's attributes are written one by one
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    _ONE_TRANSACTION = hasattr(optuna.storages.RDBStorage, "_set_trial_attr_without_commit")
except ImportError:
    _ONE_TRANSACTION = False


# The databases whose INSERT ... ON CONFLICT DO UPDATE SQLAlchemy writes (SQLite's since 3.24).
_UPSERT = {"postgresql": sqlalchemy.dialects.postgresql.insert}
if sqlite3.sqlite_version_info >= (3, 24, 0):
    _UPSERT["sqlite"] = sqlalchemy.dialects.sqlite.insert


class SearchStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage plus the one write it lacks: several user attributes of a trial in one
    transaction. A trial records about fifteen (its metrics, configuration, checkpoint); one commit
    each was a third of the time a demo trial spends outside training."""

    def stale_trial_numbers(self, study_name: str) -> set[int]:
        """The study's running trials whose worker has sent no heartbeat for the grace period (it
        was killed or lost): the next worker to start a trial fails them and queues them again."""
        study_id = self.get_study_id_from_name(study_name)
        return {self.get_trial_number_from_id(trial_id) for trial_id in self._get_stale_trial_ids(study_id)}

    def set_trial_user_attrs(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        """On PostgreSQL and SQLite: the trial read and checked once, then one upsert of every row
        (the same rows and the same refusal of a finished trial as Optuna's ``set_trial_user_attr``).
        Elsewhere Optuna's own per-attribute write, committed once."""
        table, upsert = models.TrialUserAttributeModel, _UPSERT.get(self.engine.name)
        if not attrs:
            return
        with _create_scoped_session(self.scoped_session, True) as session:
            if upsert is None:
                for key, value in attrs.items():
                    self._set_trial_attr_without_commit(session, table, trial_id, key, value)
                return
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
            self.check_trial_is_updatable(trial_id, trial.state)
            rows = upsert(table).values(
                [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
            )
            session.execute(
                rows.on_conflict_do_update(
                    index_elements=[table.trial_id, table.key], set_={"value_json": rows.excluded.value_json}
                )
            )


def set_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """``trial.set_user_attr`` for each of ``attrs``, in one transaction where the storage allows."""
    storage = getattr(trial.storage, "_backend", trial.storage)  # Optuna puts a cache in front of an RDB storage
    if not (_ONE_TRANSACTION and isinstance(storage, SearchStorage)):
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    storage.set_trial_user_attrs(trial._trial_id, attrs)
    cached = getattr(trial, "_cached_frozen_trial", None)  # what ``trial.user_attrs`` returns; set_user_attr updates it
    if cached is not None:
        cached.user_attrs.update(attrs)


def open_storage(url: str, heartbeat_interval: int = 10, grace_period: int = 30) -> SearchStorage:
    """An RDB storage with heartbeats on: a killed worker's trial turns FAIL and is retried."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are marked experimental
        try:
            storage = SearchStorage(
                url,
                engine_kwargs=_engine_kwargs(url),
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
            )
            if is_sqlite(url):
                _write_ahead_log(storage.engine)
            return storage
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError) as error:
            raise StorageError(f"cannot open storage {redact(url)}: {describe_db_error(error)}") from None


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
        raise SearchServiceError(f"no study '{name}' in this storage; studies here: {names}") from None


def stop_requests(study: optuna.Study) -> int:
    """How many times ``search stop`` was asked for this study. A worker notes the count when it
    starts and stops before its next trial once the count grew: a stop reaches the workers running
    at the time, wherever they run, and a run started later goes on (no flag for it to clear, or to
    clear too early for workers still finishing a trial)."""
    return int(study.user_attrs.get(STOP_ATTR, 0))


def request_stop(study: optuna.Study) -> None:
    study.set_user_attr(STOP_ATTR, stop_requests(study) + 1)


def artifact_dir(given: str | None) -> Path:
    """``--artifacts``, else ``$SEARCH_ARTIFACTS``, else ``search_home()/artifacts``."""
    return Path(given or os.environ.get("SEARCH_ARTIFACTS") or search_home() / "artifacts")


class AtomicArtifactStore(FileSystemArtifactStore):
    """Optuna's file-system store, but a write is a temporary file then a rename: never half a file."""

    def __init__(self, base_path: Path) -> None:
        make_folder(base_path, "the artifact folder", "give another --artifacts")
        super().__init__(base_path)
        self.base_path = base_path

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        target = self._get_filepath(artifact_id)
        try:
            handle, temporary = tempfile.mkstemp(prefix=f".{artifact_id}.", dir=target.parent)
            os.close(handle)
        except OSError as error:
            raise DiskError(f"could not store artifact in {target.parent}: {error.strerror or error}") from None
        try:
            if not self._link(content_body, temporary):
                with open(temporary, "wb") as file:
                    while chunk := content_body.read(1 << 20):
                        file.write(chunk)
                    file.flush()
                    os.fsync(file.fileno())
                make_readable(temporary)
            os.replace(temporary, target)
        except OSError as error:
            Path(temporary).unlink(missing_ok=True)
            raise DiskError(f"could not store artifact in {target.parent}: {error.strerror or error}") from None

    @staticmethod
    def _link(content_body: BinaryIO, temporary: str) -> bool:
        """A checkpoint on the same file system is linked, not copied: no second write of its bytes."""
        source = getattr(content_body, "name", None)
        if not isinstance(source, str) or not os.path.isfile(source):
            return False
        try:
            os.unlink(temporary)
            os.link(source, temporary)
        except OSError:
            Path(temporary).touch()
            return False
        return True


def upload(store: AtomicArtifactStore, path: Path, record: Callable[[str, str], None]) -> str:
    """Store a file as an artifact: the bytes first, then ``record(artifact_id, meta_json)`` writes
    the attribute that points to them, so a failed write never leaves a record of a missing or
    truncated file."""
    artifact_id = str(uuid.uuid4())
    with open(path, "rb") as file:
        store.write(artifact_id, file)
    meta = {
        "artifact_id": artifact_id,
        "filename": path.name,
        "mimetype": mimetypes.guess_type(path.name)[0] or "application/octet-stream",
        "encoding": None,
    }
    record(artifact_id, json.dumps(meta))
    return artifact_id


def trial_artifact_record(trial: optuna.Trial) -> Callable[[str, str], None]:
    """Where Optuna keeps a running trial's artifacts: a trial system attribute."""
    return lambda artifact_id, meta: trial.storage.set_trial_system_attr(
        trial._trial_id, f"artifacts:{artifact_id}", meta
    )


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
            self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **_engine_kwargs(url))

    def acquire(self) -> None:
        if self._held is not None:
            return
        if self._engine is not None:
            connection = self._engine.connect()
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            self._held = connection
        elif self.driver.startswith("sqlite") and make_url(self.url).database:
            handle = open(f"{make_url(self.url).database}.lock", "a")
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._held = handle
        else:
            self._held = True

    def release(self) -> None:
        """Idempotent: the objective releases it first thing, the worker loop again to be sure."""
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
