"""One record of what a trial leaves, and the one ranking of a study's complete trials."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from search import record
from search.record import NO_REASON, TrialRecord, best, failures_by_reason, ranked


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
