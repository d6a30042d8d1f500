"""Trials whose worker stopped: found by their missing heartbeats, failed saying why, queued again."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import optuna
import pytest

from search.store import _stale, open_storage


@pytest.mark.slow
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

    found = _stale.stale_trials(storage, study.study_name)
    assert sorted((s.number, s.last_heartbeat is None) for s in found) == [(0, False), (1, True)]
    assert abs(found[0].last_heartbeat - last_beat) < timedelta(seconds=1)
    _stale.fail_stale_trials(study, record.stopped_worker)

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
    assert _stale.stale_trials(storage, study.study_name) == []  # failed once, by one worker
    optuna.delete_study(study_name=study.study_name, storage=storage)


def test_a_worker_that_tells_complete_while_its_trial_is_failed_never_leaves_a_complete_trial_with_a_reason(
    storage_url,
):
    """A partitioned worker comes back and tells COMPLETE just after the reason is committed: the
    reason and the FAIL state are one transaction, so its tell finds the trial failed."""
    import sqlalchemy.orm

    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name=f"race-{uuid.uuid4().hex[:8]}", direction="maximize")
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    elsewhere = open_storage(storage_url)  # the partitioned worker's own connection
    worker = optuna.load_study(study_name=study.study_name, storage=elsewhere)
    told, busy = [], []

    def tell_complete(session) -> None:  # after the commit that wrote the reason, once
        if busy or told:
            return
        busy.append(1)
        try:
            if "failure_reason" in elsewhere.get_trial(trial._trial_id).user_attrs:
                told.append(1)
                try:
                    worker.tell(trial.number, 0.9)
                except Exception as error:  # noqa: BLE001 - already failed: refused, as it should be
                    told.append(error)
        finally:
            busy.clear()

    sqlalchemy.event.listen(sqlalchemy.orm.Session, "after_commit", tell_complete)
    try:
        _stale.fail_and_retry(study, trial._trial_id, lambda t: {"failure_reason": "its worker stopped"})
    finally:
        sqlalchemy.event.remove(sqlalchemy.orm.Session, "after_commit", tell_complete)
    ended = study.get_trials()[0]
    assert told and (ended.state.name, "failure_reason" in ended.user_attrs) == ("FAIL", True), ended
    optuna.delete_study(study_name=study.study_name, storage=storage)
