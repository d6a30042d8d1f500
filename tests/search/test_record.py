"""One record of what a trial leaves, and the one ranking of a study's complete trials."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from search import record
from search.ranking import best, ranked
from search.record import NO_REASON, TrialRecord, failures_by_reason


def _study_with(values: list[tuple[TrialState, float | None, dict]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for state, value, attrs in values:
        trial = study.ask()
        for key, attr in attrs.items():
            trial.set_user_attr(key, attr)
        study.tell(trial, value, state)
    return study


def test_a_record_reads_its_own_fields_and_none_for_what_an_earlier_version_did_not_write():
    study = _study_with([(TrialState.COMPLETE, 0.5, {"macro_f1": 0.5, "best_epoch": 2, "someone_elses": 1})])
    kept = TrialRecord.of(study.trials[0])
    assert (kept.macro_f1, kept.best_epoch, kept.device, kept.failure_reason) == (0.5, 2, None, None)


def test_a_name_the_record_lacks_is_refused_where_it_is_written():
    with pytest.raises(AssertionError, match="not fields of TrialRecord"):
        record._attrs(macro_f2=0.5)


def test_complete_trials_rank_best_first_and_equal_ones_by_their_number():
    study = _study_with(
        [
            (TrialState.COMPLETE, 0.7, {}),
            (TrialState.PRUNED, None, {}),
            (TrialState.COMPLETE, 0.9, {}),
            (TrialState.COMPLETE, 0.7, {}),
            (TrialState.FAIL, None, {}),
        ]
    )
    assert [t.number for t in ranked(study.trials)] == [2, 0, 3]
    assert best(study.trials).number == 2
    assert best([]) is None


def test_failures_group_by_reason_the_most_frequent_first():
    study = _study_with(
        [
            (TrialState.FAIL, None, {"failure_reason": "interrupted"}),
            (TrialState.FAIL, None, {}),
            (TrialState.FAIL, None, {"failure_reason": "OutOfMemoryError"}),
            (TrialState.FAIL, None, {"failure_reason": "OutOfMemoryError"}),
        ]
    )
    assert failures_by_reason(study.trials) == [("OutOfMemoryError", [2, 3]), ("interrupted", [0]), (NO_REASON, [1])]


def test_a_failed_trial_queued_again_says_as_which_trial_and_whether_it_ran():
    stopped = "worker a:1 stopped sending heartbeats at 2026-12-06 10:00:00 UTC"
    study = _study_with([(TrialState.FAIL, None, {"failure_reason": reason}) for reason in (stopped, "interrupted")])
    for failed, ran in ((0, True), (1, False)):
        retry = optuna.trial.create_trial(
            state=TrialState.WAITING, system_attrs={"failed_trial": failed, "retry_history": [failed]}
        )
        study.add_trial(retry)
        if ran:
            study.tell(study.ask(), 0.5)  # takes the queued retry: trial 2
    assert failures_by_reason(study.trials) == [
        (f"{stopped}; retried as trial 2", [0]),
        ("interrupted; queued again as trial 3", [1]),
    ]


def test_a_stopped_workers_reason_names_the_worker_and_its_last_heartbeat_or_the_trials_start():
    from datetime import datetime, timezone

    from search.store import StaleTrial

    study = _study_with([(TrialState.COMPLETE, 0.5, {"worker": "gpu-3:4121"}), (TrialState.COMPLETE, 0.5, {})])
    named, unnamed = study.trials
    beat = StaleTrial(named._trial_id, 0, datetime(2026, 12, 6, 10, 0, 5))
    assert record.stopped_worker(beat, named) == {
        "failure_reason": "worker gpu-3:4121 stopped sending heartbeats at 2026-12-06 10:00:05 UTC"
    }
    started = unnamed.datetime_start.astimezone(timezone.utc)
    assert record.stopped_worker(StaleTrial(unnamed._trial_id, 1, None), unnamed) == {
        "failure_reason": f"its worker sent no heartbeat after the trial started at {started:%Y-%m-%d %H:%M:%S} UTC"
    }
