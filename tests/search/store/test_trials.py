"""A study's trials read as a worker needs them: counts by state, a new trial, the finished trials
fetched once each."""

from __future__ import annotations

import contextlib
import uuid

import optuna
import pytest

from search.store import _internals, _trials, open_storage


def test_trial_counts_by_the_database_equal_optunas_own(tmp_path, monkeypatch):
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    study.ask()  # running
    study.enqueue_trial({"x": 0.5})
    counted = _trials.trial_counts(study)
    assert counted == {"COMPLETE": 3, "PRUNED": 1, "RUNNING": 1, "WAITING": 1}
    monkeypatch.setattr(_internals, "MISSING", ["a private name this Optuna lacks"])
    assert _trials.trial_counts(study) == counted


@pytest.mark.slow
def test_confirmation_runs_are_counted_apart_and_taken_only_by_ask_confirmation(storage_url, monkeypatch):
    study = optuna.create_study(storage=open_storage(storage_url), study_name=f"confirm-{uuid.uuid4().hex[:8]}")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    study.enqueue_trial({"x": 0.5})  # a queued trial of the search
    for seed in (1, 2):
        marker = {_trials.CONFIRMS: {"trial": 0, "seed": seed}, "fixed_params": study.trials[0].params}
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, system_attrs=marker))
    counted = _trials.trial_counts(study)
    assert counted == {"COMPLETE": 2, "WAITING": 1, "confirmation WAITING": 2}
    monkeypatch.setattr(_internals, "MISSING", ["a private name this Optuna lacks"])
    assert _trials.trial_counts(study) == counted
    monkeypatch.undo()
    run = _trials.ask_confirmation(study)
    assert run.number == 3 and _trials.confirmation_of(run) == {"trial": 0, "seed": 1}
    assert run.suggest_float("x", 0, 1) == study.trials[0].params["x"]  # the configuration it confirms
    assert _trials.confirmation_of(_trials.ask(study, queued=1)) is None  # the search's queued trial
    assert _trials.trial_counts(study) == {"COMPLETE": 2, "RUNNING": 1, "confirmation RUNNING": 1,
                                           "confirmation WAITING": 1}  # fmt: skip
    monkeypatch.setattr(_internals, "MISSING", ["a private name this Optuna lacks"])
    assert _trials.ask_confirmation(study).number == 4  # by Optuna's own ask
    assert _trials.ask_confirmation(study) is None  # none left: no new trial made


def test_a_new_trial_is_made_without_optunas_look_for_queued_ones_only_when_none_is_queued(tmp_path, monkeypatch):
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    study.enqueue_trial({"x": 0.25})
    queued = _trials.ask(study, queued=1)
    assert queued.suggest_float("x", 0, 1) == 0.25  # the queued trial, taken
    fresh = _trials.ask(study, queued=0)
    assert fresh.number == 1 and 0 <= fresh.suggest_float("x", 0, 1) <= 1
    study.tell(queued, 1.0)
    study.tell(fresh, 0.5)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    monkeypatch.setattr(_internals, "MISSING", ["a private name this Optuna lacks"])
    assert _trials.ask(study, queued=0).number == 2  # Optuna's own ask


def test_a_trial_queued_after_the_count_is_taken_first(tmp_path):
    """Counted with none queued, then another worker queues one (its interrupted trial): the next ask takes it."""
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    counted = _trials.trial_counts(study)["WAITING"]
    study.enqueue_trial({"x": 0.75})
    taken = _trials.ask(study, queued=counted)
    assert taken.number == 0 and taken.suggest_float("x", 0, 1) == 0.75
    assert _trials.trial_counts(study) == {"RUNNING": 1}


def _seen(trials):
    return [(t.number, t.state, t.params, t.values, t.user_attrs, t.intermediate_values) for t in trials]


@pytest.mark.slow
def test_finished_trials_are_optunas_own_and_each_is_fetched_once(storage_url, monkeypatch):
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name=f"finished-{uuid.uuid4().hex[:8]}", direction="maximize")
    backend = _internals.rdb_storage(storage)
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
        return study.get_trials(states=_internals.FINISHED)

    finish(0.5)
    finish(0.2, optuna.trial.TrialState.PRUNED)
    finish(0.1, optuna.trial.TrialState.FAIL)
    running = study.ask()
    fetched.clear()  # Optuna's own reads, through its cache
    ours = _trials.finished_trials(study)
    assert sorted(fetched) == [0, 1, 2]
    assert _seen(ours) == _seen(optunas_own())
    finish(0.7)
    study.tell(running, 0.3)
    fetched.clear()
    ours = _trials.finished_trials(study)
    assert sorted(fetched) == [3, 4]  # only the two that finished since the first read
    assert _seen(ours) == _seen(optunas_own())
    fetched.clear()
    assert len(_trials.finished_trials(study)) == 5 and fetched == []
    monkeypatch.setattr(_internals, "MISSING", ["a private name this Optuna lacks"])
    assert _seen(_trials.finished_trials(study)) == _seen(optunas_own())
    optuna.delete_study(study_name=study.study_name, storage=storage)


def test_finished_trials_of_a_study_deleted_and_made_again_are_the_new_studys(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")  # SQLite gives the new study and trials the old ids
    for values in ([0.1, 0.2, 0.3], [0.6, 0.7, 0.8, 0.9]):
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name="s", storage=storage)
        study = optuna.create_study(storage=storage, study_name="s")
        for value in values:
            study.tell(study.ask(), value)
        assert [t.value for t in _trials.finished_trials(study)] == values
