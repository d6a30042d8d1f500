"""The storage's own writes: a trial's user attributes in one transaction, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import datetime, timedelta, timezone

import optuna
import pytest
import sqlalchemy
from conftest import postgres_url

from search.store import AtomicArtifactStore, open_storage, optuna_private, set_user_attrs
from search.store.artifacts import upload_to_trial

ATTRS = {
    "macro_f1": 0.75,
    "per_class_f1": [0.5, None, 1.0],
    "confusion_matrix": [[3, 1], [0, 4]],
    "device": "cuda",
    "config": '{"lr": 0.001}',
}


@contextlib.contextmanager
def counted(engine: sqlalchemy.engine.Engine, event: str = "commit"):
    """A list that gets one entry per ``event`` on ``engine`` inside the block (``commit``: one per
    transaction committed; ``before_cursor_execute``: one per SQL statement sent)."""
    seen: list = []

    def count(*args) -> None:
        seen.append(args)

    sqlalchemy.event.listen(engine, event, count)
    try:
        yield seen
    finally:
        sqlalchemy.event.remove(engine, event, count)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path) -> str:
    return f"sqlite:///{tmp_path}/studies.db" if request.param == "sqlite" else postgres_url()


def test_user_attributes_are_one_commit_and_read_back_as_if_set_one_by_one(storage_url):
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name=f"attrs-{uuid.uuid4().hex[:8]}")
    one_by_one, batched = study.ask(), study.ask()
    for key, value in ATTRS.items():
        one_by_one.set_user_attr(key, value)

    with counted(storage.engine) as commits:
        set_user_attrs(batched, ATTRS)
        set_user_attrs(batched, {"macro_f1": 0.8})  # a second write of a key replaces it, as set_user_attr does

    assert len(commits) == 2
    assert batched.user_attrs == ATTRS | {"macro_f1": 0.8}  # the running trial sees them too
    # Read back through a storage of its own, as another worker or the dashboard would.
    trials = optuna.load_study(study_name=study.study_name, storage=storage_url).trials
    assert trials[0].user_attrs == ATTRS
    assert trials[1].user_attrs == ATTRS | {"macro_f1": 0.8}
    optuna.delete_study(study_name=study.study_name, storage=storage)


def test_a_finished_trial_refuses_attributes_as_optuna_does(storage_url):
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name=f"attrs-{uuid.uuid4().hex[:8]}")
    trial = study.ask()
    study.tell(trial, 0.5)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_user_attrs(trial, ATTRS)
    assert optuna.load_study(study_name=study.study_name, storage=storage_url).trials[0].user_attrs == {}
    optuna.delete_study(study_name=study.study_name, storage=storage)


def test_other_storages_get_the_attributes_one_by_one():
    study = optuna.create_study()  # in memory
    trial = study.ask()
    set_user_attrs(trial, ATTRS)
    assert study.trials[0].user_attrs == ATTRS


def test_without_the_optuna_internals_it_needs_the_attributes_are_still_written(tmp_path, monkeypatch):
    """Optuna is not pinned: if a release renames what the one-transaction write uses, the
    attributes go one commit each instead of failing the trial."""
    monkeypatch.setattr(optuna_private, "MISSING", ["a private name this Optuna lacks"])
    storage = open_storage(f"sqlite:///{tmp_path}/studies.db")
    study = optuna.create_study(storage=storage, study_name="fallback")
    trial = study.ask()
    with counted(storage.engine) as commits:
        set_user_attrs(trial, ATTRS)
    assert len(commits) == len(ATTRS)
    assert optuna.load_study(study_name="fallback", storage=storage).trials[0].user_attrs == ATTRS


def test_user_attributes_cost_two_statements_however_many_there_are(storage_url):
    """The trial is read and checked once, and every attribute goes in one upsert: on PostgreSQL
    each statement is a round trip (Optuna's per-attribute write sends two per attribute)."""
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name=f"attrs-{uuid.uuid4().hex[:8]}")
    trial = study.ask()
    many = {f"metric_{i}": i / 10 for i in range(15)}
    with counted(storage.engine, "before_cursor_execute") as statements:
        set_user_attrs(trial, many)
    sent = [args[2].split()[0].upper() for args in statements]
    assert sent.count("SELECT") == 1 and sent.count("INSERT") == 1 and len(sent) <= 3, sent
    assert optuna.load_study(study_name=study.study_name, storage=storage_url).trials[0].user_attrs == many
    optuna.delete_study(study_name=study.study_name, storage=storage)


def test_the_private_names_of_optuna_the_project_uses_are_where_it_expects(tmp_path):
    """Fails on an Optuna release that moved them: the project still works (through the fallbacks
    below), but slower (one commit per attribute) and without the list of stale trials."""
    assert not optuna_private.MISSING, (
        f"Optuna {optuna.__version__} has no {', '.join(optuna_private.MISSING)}: search falls back to Optuna's "
        "public API (a trial's attributes one commit each, no stale-trial list); update search/store/optuna_private.py"
    )
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/studies.db"))
    trial = study.ask()
    for thing, name in (
        (trial, "_trial_id"),
        (trial, "_cached_frozen_trial"),
        (study, "_study_id"),
        (study, "_storage"),
    ):
        assert hasattr(thing, name), f"Optuna {optuna.__version__} moved {type(thing).__name__}.{name}"
    assert optuna_private.rdb_storage(study._storage) is not None, (
        "Optuna's cache no longer keeps its storage as _backend"
    )


def test_without_the_private_names_the_public_api_answers(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/studies.db"
    study = optuna.create_study(storage=open_storage(url, heartbeat_interval=1, grace_period=1), study_name="s")
    trial = study.ask()
    storage = study._storage
    private = (optuna_private.trial_id(trial), optuna_private.study_id(study, storage))

    # a trial and a study as the public API sees them: no private ids
    public_study = type("Study", (), {"study_name": "s"})()
    public_trial = type("Trial", (), {"number": trial.number, "study": public_study, "storage": storage})()
    assert (optuna_private.trial_id(public_trial), optuna_private.study_id(public_study, storage)) == private
    monkeypatch.setattr(optuna_private, "MISSING", ["a private name this Optuna lacks"])
    assert optuna_private.stale_trial_numbers(study._storage, "s") == set()  # not known, and no error


def test_a_checkpoint_is_recorded_where_optuna_looks_with_or_without_its_private_key(tmp_path, monkeypatch):
    """Optuna's public reader finds the trial's file, recorded by the project's upload (bytes first)
    or, where this Optuna moved its key, by Optuna's own ``upload_artifact``."""
    store = AtomicArtifactStore(tmp_path / "artifacts")
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/studies.db"))
    checkpoint = tmp_path / "best.safetensors"
    checkpoint.write_bytes(b"weights")
    ours = upload_to_trial(store, checkpoint, study.ask())
    monkeypatch.setattr(optuna_private, "ARTIFACTS_ATTR_PREFIX", None)
    theirs = upload_to_trial(store, checkpoint, study.ask())
    for trial, artifact_id in zip(study.trials, (ours, theirs)):
        [meta] = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
        assert (meta.artifact_id, meta.filename) == (artifact_id, "best.safetensors")
        assert (store.base_path / artifact_id).read_bytes() == b"weights"


def test_trial_counts_by_the_database_equal_optunas_own(tmp_path, monkeypatch):
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    study.ask()  # running
    study.enqueue_trial({"x": 0.5})
    counted = optuna_private.trial_counts(study)
    assert counted == {"COMPLETE": 3, "PRUNED": 1, "RUNNING": 1, "WAITING": 1}
    monkeypatch.setattr(optuna_private, "MISSING", ["a private name this Optuna lacks"])
    assert optuna_private.trial_counts(study) == counted


def test_a_new_trial_is_made_without_optunas_look_for_queued_ones_only_when_none_is_queued(tmp_path, monkeypatch):
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    study.enqueue_trial({"x": 0.25})
    queued = optuna_private.ask(study, queued=1)
    assert queued.suggest_float("x", 0, 1) == 0.25  # the queued trial, taken
    fresh = optuna_private.ask(study, queued=0)
    assert fresh.number == 1 and 0 <= fresh.suggest_float("x", 0, 1) <= 1
    study.tell(queued, 1.0)
    study.tell(fresh, 0.5)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    monkeypatch.setattr(optuna_private, "MISSING", ["a private name this Optuna lacks"])
    assert optuna_private.ask(study, queued=0).number == 2  # Optuna's own ask


def _seen(trials):
    return [(t.number, t.state, t.params, t.values, t.user_attrs, t.intermediate_values) for t in trials]


def test_finished_trials_are_optunas_own_and_each_is_fetched_once(storage_url, monkeypatch):
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name=f"finished-{uuid.uuid4().hex[:8]}", direction="maximize")
    backend = optuna_private.rdb_storage(storage)
    fetched: list[int] = []
    real = backend._get_trials

    def spied(*args, **kwargs):
        trials = real(*args, **kwargs)
        fetched.extend(t.number for t in trials)
        return trials

    monkeypatch.setattr(backend, "_get_trials", spied)

    def finish(value, state=optuna.trial.TrialState.COMPLETE):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.report(value, 0)
        trial.set_user_attr("macro_f1", value)
        study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)

    def optunas_own():
        return study.get_trials(states=optuna_private.FINISHED)

    finish(0.5)
    finish(0.2, optuna.trial.TrialState.PRUNED)
    finish(0.1, optuna.trial.TrialState.FAIL)
    running = study.ask()
    fetched.clear()  # Optuna's own reads, through its cache
    ours = optuna_private.finished_trials(study)
    assert sorted(fetched) == [0, 1, 2]
    assert _seen(ours) == _seen(optunas_own())
    finish(0.7)
    study.tell(running, 0.3)
    fetched.clear()
    ours = optuna_private.finished_trials(study)
    assert sorted(fetched) == [3, 4]  # only the two that finished since the first read
    assert _seen(ours) == _seen(optunas_own())
    fetched.clear()
    assert len(optuna_private.finished_trials(study)) == 5 and fetched == []
    monkeypatch.setattr(optuna_private, "MISSING", ["a private name this Optuna lacks"])
    assert _seen(optuna_private.finished_trials(study)) == _seen(optunas_own())
    optuna.delete_study(study_name=study.study_name, storage=storage)


def test_finished_trials_of_a_study_deleted_and_made_again_are_the_new_studys(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")  # SQLite gives the new study and trials the old ids
    for values in ([0.1, 0.2, 0.3], [0.6, 0.7, 0.8, 0.9]):
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name="s", storage=storage)
        study = optuna.create_study(storage=storage, study_name="s")
        for value in values:
            study.tell(study.ask(), value)
        assert [t.value for t in optuna_private.finished_trials(study)] == values


def test_a_trial_whose_worker_stopped_or_never_sent_a_heartbeat_fails_saying_why_and_is_queued_again(storage_url):
    from search import record

    storage = open_storage(storage_url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name=f"stale-{uuid.uuid4().hex[:8]}")
    stopped, silent, alive = (study.ask() for _ in range(3))
    for trial in (stopped, silent, alive):
        trial.suggest_float("x", 0, 1)
    stopped.set_user_attr("worker", "gpu-3:4121")
    storage.record_heartbeat(stopped._trial_id)
    last_beat = datetime.now(timezone.utc).replace(tzinfo=None)
    time.sleep(3)
    storage.record_heartbeat(alive._trial_id)

    found = optuna_private.stale_trials(storage, study.study_name)
    assert sorted((s.number, s.last_heartbeat is None) for s in found) == [(0, False), (1, True)]
    assert abs(found[0].last_heartbeat - last_beat) < timedelta(seconds=1)
    optuna_private.fail_stale_trials(study, record.stopped_worker)

    trials = study.get_trials()
    assert [t.state.name for t in trials[:3]] == ["FAIL", "FAIL", "RUNNING"]
    assert trials[0].user_attrs["failure_reason"].startswith("worker gpu-3:4121 stopped sending heartbeats at ")
    assert trials[1].user_attrs["failure_reason"].startswith("its worker sent no heartbeat after the trial started at ")
    retries = trials[3:]
    assert [(t.state.name, t.params, t.user_attrs) for t in retries] == [
        ("WAITING", trials[0].params, {}),
        ("WAITING", trials[1].params, {}),
    ]
    assert [t.system_attrs["failed_trial"] for t in retries] == [0, 1]
    assert optuna_private.stale_trials(storage, study.study_name) == []  # failed once, by one worker
    optuna.delete_study(study_name=study.study_name, storage=storage)
