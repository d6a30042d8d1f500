"""Opening a study: the study file's known-good configurations queued once in the study's life,
however many workers open it at once, and a worker joining a running study reads no trials for it."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import optuna
import pytest

from search.run.open import create_study
from search.run.options import RunOptions
from search.store import open_storage
from search.study import load_study
from search.study.recorded import QUEUED_ATTR

KNOWN = [
    {"lr": 0.003, "accumulation_steps": 1, "scheduler": "cosine", "loss": "cross_entropy"},
    {"lr": 0.001, "accumulation_steps": 2, "scheduler": "cosine", "loss": "f1"},
]


def _open(url: str, name: str, enqueue: list[dict], errors: list[BaseException] | None = None) -> None:
    spec = load_study("lr-sweep", [f"name={name}", f"enqueue={enqueue}"])
    storage = open_storage(url)
    try:
        create_study(spec, RunOptions(url, Path("."), 1, None, quiet=True), storage, say=lambda line: None)
    except BaseException as error:  # noqa: BLE001 - the thread's error fails the test below
        if errors is None:
            raise
        errors.append(error)
    finally:
        storage.engine.dispose()


@pytest.mark.slow
def test_workers_opening_a_study_at_once_queue_each_known_good_configuration_once(monkeypatch, postgres_url):
    name = f"open-{uuid.uuid4().hex[:8]}"
    try:
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_open, args=(postgres_url, name, KNOWN, errors)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        study = optuna.load_study(study_name=name, storage=postgres_url)
        assert len(study.trials) == 2 and all(t.params == {} for t in study.trials)  # waiting: no params yet
        assert [t.system_attrs["fixed_params"] for t in study.trials] == KNOWN
        assert study.user_attrs[QUEUED_ATTR] == KNOWN

        def no_trials_read(*args, **kwargs):
            raise AssertionError("a worker joining the study read its trials to queue what was queued")

        with monkeypatch.context() as patched:
            patched.setattr(optuna.Study, "get_trials", no_trials_read)
            _open(postgres_url, name, KNOWN)

        edited = [*KNOWN, {**KNOWN[0], "lr": 0.01}]  # the file gains a configuration: it is queued, once
        _open(postgres_url, name, edited)
        _open(postgres_url, name, edited)
        study = optuna.load_study(study_name=name, storage=postgres_url)
        assert [t.system_attrs["fixed_params"] for t in study.trials] == edited
        assert study.user_attrs[QUEUED_ATTR] == edited
    finally:
        optuna.delete_study(study_name=name, storage=postgres_url)


@pytest.mark.parametrize("enqueue", [[], KNOWN[:1]])
def test_a_study_made_before_the_record_is_not_queued_again(tmp_path, enqueue):
    url = f"sqlite:///{tmp_path}/old.db"
    study = optuna.create_study(study_name="old", storage=url, direction="maximize")
    for params in enqueue:  # queued by a run that recorded nothing
        study.enqueue_trial(params)
    spec = load_study("lr-sweep", ["name=old", f"enqueue={KNOWN}"])
    storage = open_storage(url)
    create_study(spec, RunOptions(url, tmp_path, 1, None, quiet=True), storage, say=lambda line: None)
    storage.engine.dispose()
    trials = optuna.load_study(study_name="old", storage=url).trials
    assert [t.system_attrs["fixed_params"] for t in trials] == KNOWN


def test_a_storage_that_never_answered_is_one_line_at_once_and_one_that_did_is_waited_for(tmp_path, monkeypatch):
    """A wrong host or port at start is not a restart: no minute of retries before the line."""
    import socket

    import search.run.open as opening
    from search.store import database
    from tests.conftest import search_here

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg2://search@127.0.0.1:{port}/search"
    waits = []
    monkeypatch.setattr(database.time, "sleep", waits.append)
    monkeypatch.setattr(opening.time, "sleep", waits.append)
    run = search_here("run", "--study", "lr-sweep", "--storage", url, env={"SEARCH_HOME": str(tmp_path)})
    assert run.returncode == 1 and waits == []
    assert run.stderr.splitlines() == [
        f'search: error: cannot open storage {url}: connection to server at "127.0.0.1", port {port} failed: '
        "Connection refused; check the host and port of the storage URL, and that its server runs"
    ], run.stderr
    monkeypatch.setattr(database.time, "monotonic", iter(range(0, 10_000, 5)).__next__)  # 5 s a look
    monkeypatch.setitem(database.__dict__, "_ANSWERED", {url})  # as after it answered once in this process
    with pytest.raises(database.StorageError, match="Connection refused"):
        database.open_storage(url, wait=60, say=lambda line: None, wait_if_never_answered=False)
    assert len(waits) >= 10  # then a refusal is a restart: tried again until the wait is over


def _starting_up_server() -> tuple[int, threading.Event]:
    """A port where a server answers every connection as PostgreSQL does while it starts: FATAL
    57P03, "the database system is starting up"."""
    import socket
    import struct

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    done = threading.Event()

    def answer(connection: socket.socket) -> None:
        with connection:
            while True:  # SSL and GSS requests are declined; the startup message is refused
                size, code = struct.unpack("!ii", connection.recv(8))
                connection.recv(size - 8)
                if code in (80877103, 80877104):
                    connection.sendall(b"N")
                    continue
                fields = b"SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0\0"
                connection.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)
                return

    def serve() -> None:
        with listener:
            while not done.is_set():
                try:
                    answer(listener.accept()[0])
                except (TimeoutError, OSError, struct.error):
                    continue

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], done


def test_a_server_that_says_it_is_starting_up_is_waited_for_though_it_never_answered(tmp_path, monkeypatch):
    """A worker started during a restart meets a server that answers but is not ready: a restart,
    not a wrong host or port."""
    import search.run.open as opening
    from search.store import database
    from tests.conftest import search_here

    port, done = _starting_up_server()
    url = f"postgresql+psycopg2://search@127.0.0.1:{port}/search"
    waits = []
    monkeypatch.setattr(database.time, "sleep", waits.append)
    monkeypatch.setattr(opening.time, "sleep", waits.append)
    monkeypatch.setattr(database.time, "monotonic", iter(range(0, 100_000, 5)).__next__)  # 5 s a look
    try:
        run = search_here("run", "--study", "lr-sweep", "--storage", url, env={"SEARCH_HOME": str(tmp_path)})
    finally:
        done.set()
    assert run.returncode == 1 and len(waits) >= 10, (waits, run.stderr)
    refused = (
        f'cannot open storage {url}: connection to server at "127.0.0.1", port {port} failed: FATAL:  the '
        "database system is starting up"
    )
    assert run.stderr.splitlines() == [
        f"{refused}: trying again for up to 60 s (a restarting server)",
        f"search: error: {refused}",
    ], run.stderr


def test_a_storage_that_answered_from_this_search_home_before_is_waited_for_by_a_new_process(tmp_path, monkeypatch):
    """A worker started again while its server restarts (a requeued job) waits, as the first did;
    the note names no URL, so it holds no password."""
    import hashlib
    import socket

    from search.store import database

    with socket.socket() as probe:  # a port nothing listens on (for now: the server restarts)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg2://search:secret@127.0.0.1:{port}/search"
    monkeypatch.setenv("SEARCH_HOME", str(tmp_path))
    monkeypatch.setitem(database.__dict__, "_ANSWERED", set())
    database._remember(url)  # as the earlier process did when it opened the storage
    monkeypatch.setitem(database.__dict__, "_ANSWERED", set())  # this is a new process
    without_password = url.replace(":secret@", ":***@")  # a digest of this: nothing to test guesses against
    assert (tmp_path / database.ANSWERED_FILE).read_text().split() == [
        hashlib.sha256(without_password.encode()).hexdigest()
    ]
    waits = []
    monkeypatch.setattr(database.time, "sleep", waits.append)
    monkeypatch.setattr(database.time, "monotonic", iter(range(0, 10_000, 5)).__next__)
    with pytest.raises(database.StorageError, match="Connection refused"):
        database.open_storage(url, wait=60, say=lambda line: None, wait_if_never_answered=False)
    assert len(waits) >= 10
    monkeypatch.setenv("SEARCH_HOME", str(tmp_path / "elsewhere"))  # from another place, never answered
    waits.clear()
    with pytest.raises(database.StorageError, match="check the host and port"):
        database.open_storage(url, wait=60, say=lambda line: None, wait_if_never_answered=False)
    assert waits == []
