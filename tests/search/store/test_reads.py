"""A worker's reads of its study: one read of the finished trials for each trial, shared by the
trial's sampler, its pruner and the step after it, and no trial read whole."""

from __future__ import annotations

import uuid

import optuna
import pytest

from search.store import _internals, _snapshot, _trials, finished_after_trial, open_storage
from search.study import Component, load_study
from search.study.distributions import sample
from search.study.pruners import build_pruner
from search.study.samplers import build_sampler


def _counted(monkeypatch, module, name) -> list[int]:
    calls, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _filled(url: str, space) -> str:
    """A study of 12 finished trials, each with its matrix, one queued and one running: other workers'."""
    study = optuna.create_study(storage=open_storage(url), study_name=f"reads-{uuid.uuid4().hex[:8]}",
                                direction="maximize")  # fmt: skip
    for i in range(12):
        trial = study.ask()
        sample(trial, space)
        for step in range(3):
            trial.report(0.1 * (i % 4) + 0.01 * step, step)
        trial.set_user_attr("confusion_matrix", [[i, 1], [2, 3]])
        study.tell(trial, 0.1 * (i % 4) + 0.02)
    study.enqueue_trial({"lr": 3e-4})
    sample(study.ask(), space)  # takes the queued one: another worker's running trial
    return study.study_name


@pytest.mark.parametrize("fresh_for", [_snapshot.Reads.FRESH_SECONDS, 0.0])
def test_a_worker_reads_the_finished_trials_once_a_trial_and_no_trial_whole(storage_url, monkeypatch, fresh_for):
    spec = load_study("lr-sweep", ["enqueue=[]"])
    name = _filled(storage_url, spec.space)
    worker = optuna.load_study(
        study_name=name,
        storage=open_storage(storage_url),
        sampler=build_sampler(Component(name="tpe", n_startup_trials=3), spec.space, 0),  # constant liar: on
        pruner=build_pruner(Component(name="median", n_startup_trials=2)),
    )
    monkeypatch.setattr(_snapshot.Reads, "FRESH_SECONDS", fresh_for)
    backend, whole = _internals.rdb_storage(worker._storage), []
    real = backend._get_trials
    monkeypatch.setattr(backend, "_get_trials", lambda *a, **k: whole.extend(t.number for t in real(*a, **k)))
    reads = _counted(monkeypatch, _snapshot, "finished_trials")
    running = _counted(monkeypatch, _snapshot, "running_trials")
    for _ in range(3):  # as run_trials does: ask, sample, report and ask the pruner, tell, the step after
        trial = _trials.ask(worker)
        sample(trial, spec.space)
        for step in range(3):
            trial.report(0.05, step)
            pruned = trial.should_prune()
        worker.tell(trial, state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
                    values=None if pruned else 0.05)  # fmt: skip
        done = finished_after_trial(worker)
        assert done[-1].number == trial.number and done[-1].user_attrs == {}
    assert pruned  # below every finished trial: the median pruner saw them
    assert whole == []  # Optuna's read of the whole study, at a new worker's first trial: none
    # one read at the first question, then the step after each trial's, which the next trial takes;
    # a step's read older than FRESH_SECONDS is read again by the next trial's first question
    assert len(reads) == (1 + 3 if fresh_for else 1 + 3 + 2)
    assert len(running) == 3  # TPE's constant liar: the running trials, once a trial
