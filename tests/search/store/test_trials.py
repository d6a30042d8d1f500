"""A study's trials read as a worker needs them: counts by state, a new trial, the finished trials
fetched once each."""

from __future__ import annotations

import contextlib
import uuid

import optuna
import pytest

from search.store import _internals, _lean, _trials, open_storage


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
    assert _trials.confirmation_of(_trials.ask(study)) is None  # the search's queued trial
    assert _trials.trial_counts(study) == {"COMPLETE": 2, "RUNNING": 1, "confirmation RUNNING": 1,
                                           "confirmation WAITING": 1}  # fmt: skip
    monkeypatch.setattr(_internals, "MISSING", ["a private name this Optuna lacks"])
    assert _trials.ask_confirmation(study).number == 4  # by Optuna's own ask
    assert _trials.ask_confirmation(study) is None  # none left: no new trial made


def _numbers_read(monkeypatch, owner, name: str) -> list[int]:
    """The numbers of the trials ``owner.name`` (a read of trials) returns, from now on."""
    numbers, real = [], getattr(owner, name)

    def spied(*args, **kwargs):
        trials = real(*args, **kwargs)
        numbers.extend(t.number for t in trials)
        return trials

    monkeypatch.setattr(owner, name, spied)
    return numbers


def _whole_reads(monkeypatch, storage) -> list[int]:
    """Trials read whole by Optuna's storage (its ``_get_trials``), by number, from now on."""
    return _numbers_read(monkeypatch, _internals.rdb_storage(storage), "_get_trials")


def test_asking_takes_the_first_queued_trial_of_the_search_and_reads_no_trial_whole(tmp_path, monkeypatch):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    study = optuna.create_study(storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    marker = {_trials.CONFIRMS: {"trial": 0, "seed": 1}, "fixed_params": study.trials[0].params}
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, system_attrs=marker))
    study.enqueue_trial({"x": 0.25})
    study.enqueue_trial({"x": 0.5})
    joining = optuna.load_study(  # a sampler that reads no trial
        study_name=study.study_name,
        storage=open_storage(f"sqlite:///{tmp_path}/s.db"),
        sampler=optuna.samplers.RandomSampler(),
    )
    whole = _whole_reads(monkeypatch, joining._storage)  # a worker joining the study: nothing read yet
    queued = _trials.ask(joining)
    assert queued.number == 3 and queued.suggest_float("x", 0, 1) == 0.25  # the search's first, not the run
    assert _trials.ask(joining).suggest_float("x", 0, 1) == 0.5
    fresh = _trials.ask(joining)
    assert fresh.number == 5 and 0 <= fresh.suggest_float("x", 0, 1) <= 1
    assert _trials.ask_confirmation(joining).number == 2
    assert _trials.ask_confirmation(joining) is None  # none left: no new trial made
    assert whole == []  # Optuna's own ask reads every trial of the study whole at a new worker's first
    for trial in (queued, fresh):
        joining.tell(trial, 1.0)
    monkeypatch.setattr(_internals, "MISSING", ["a private name this Optuna lacks"])
    assert _trials.ask(joining).number == 6  # Optuna's own ask


def test_a_trial_queued_after_the_count_is_taken_first(tmp_path):
    """Counted with none queued, then another worker queues one (its interrupted trial): the next ask takes it."""
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    assert _trials.trial_counts(study)["WAITING"] == 0
    study.enqueue_trial({"x": 0.75})
    taken = _trials.ask(study)
    assert taken.number == 0 and taken.suggest_float("x", 0, 1) == 0.75
    assert _trials.trial_counts(study) == {"RUNNING": 1}


def _seen(trials, keys=_lean.WORKER_USER_ATTRS):
    """What a worker reads of each trial: everything of Optuna's ``FrozenTrial`` but the user
    attributes it does not need (``keys``: the artifact ids retention removes)."""
    shown = ("number", "state", "values", "params", "distributions", "system_attrs", "intermediate_values",
             "datetime_start", "datetime_complete", "_trial_id")  # fmt: skip
    return [
        ({name: _nan_free(getattr(t, name)) for name in shown}, {k: v for k, v in t.user_attrs.items() if k in keys})
        for t in trials
    ]


def _nan_free(value):
    """A report of nan as the word, so that two reads of it compare equal."""
    return {k: "nan" if v != v else v for k, v in value.items()} if isinstance(value, dict) else value


@pytest.mark.slow
def test_finished_trials_are_optunas_own_read_lean_and_each_is_fetched_once(storage_url, monkeypatch):
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name=f"finished-{uuid.uuid4().hex[:8]}", direction="maximize")
    fetched = _numbers_read(monkeypatch, _lean, "read")
    whole = _whole_reads(monkeypatch, storage)

    def finish(value, state=optuna.trial.TrialState.COMPLETE):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.suggest_categorical("loss", ["ce", "focal"])
        trial.report(value, 0)
        trial.report(float("nan"), 1)
        trial.set_user_attr("confusion_matrix", [[3, 1], [0, 4]])
        trial.set_user_attr("checkpoint_artifact", f"id-{trial.number}")
        study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)

    def optunas_own():
        return study.get_trials(states=_internals.FINISHED)

    finish(0.5)
    finish(0.2, optuna.trial.TrialState.PRUNED)
    finish(0.1, optuna.trial.TrialState.FAIL)
    running = study.ask()
    fetched.clear()
    ours = _trials.finished_trials(study)
    assert sorted(fetched) == [0, 1, 2]
    assert _seen(ours) == _seen(optunas_own())
    assert [t.user_attrs for t in ours] == [{"checkpoint_artifact": f"id-{n}"} for n in range(3)]  # no matrix
    finish(0.7)
    study.tell(running, 0.3)
    fetched.clear()
    whole.clear()
    ours = _trials.finished_trials(study)
    assert sorted(fetched) == [3, 4] and whole == []  # only the two that finished since, and lean
    assert _seen(ours) == _seen(optunas_own())
    fetched.clear()
    assert len(_trials.finished_trials(study)) == 5 and fetched == []
    running = study.ask()
    running.suggest_float("x", 0, 1)
    assert _seen(_trials.running_trials(study), keys=()) == _seen([study.trials[-1]], keys=())
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
