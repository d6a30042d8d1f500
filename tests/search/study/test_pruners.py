"""Every pruner a study may name builds and prunes a real Optuna study, asked when it could stop a trial."""

from __future__ import annotations

import optuna
import pytest

from search.study import Component, load_study
from search.study.pruners import PRUNERS, build_pruner, first_prunable_step


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_pruner_builds_with_its_options(name):
    options = {"patient": {"patience": 2, "wrapped": {"name": "median"}}, "percentile": {"percentile": 25.0}}.get(
        name, {}
    )
    pruner = build_pruner(Component(name=name, **options))
    assert isinstance(pruner, optuna.pruners.BasePruner)


@pytest.mark.parametrize("name", ["median", "percentile"])
def test_a_trial_is_not_asked_to_prune_before_its_pruner_could_stop_it(name):
    """The objective skips ``should_prune`` (two reads of the study) before ``first_prunable_step``:
    Optuna's pruner must indeed never stop a trial there, even one far behind the rest."""
    options = {"n_warmup_steps": 2, "n_startup_trials": 1} | ({"percentile": 75.0} if name == "percentile" else {})
    component = Component(name=name, **options)
    study = optuna.create_study(direction="maximize", pruner=build_pruner(component))
    ahead = study.ask()
    for step in range(4):
        ahead.report(1.0, step)
    study.tell(ahead, 1.0)
    behind = study.ask()
    decisions = []
    for step in range(4):
        behind.report(0.0, step)
        decisions.append(behind.should_prune())
    assert first_prunable_step(component) == 2
    assert decisions == [False, False, True, True]


def test_pruners_without_a_warm_up_are_asked_from_the_first_step():
    assert first_prunable_step(Component(name="successive_halving")) == 0
    assert first_prunable_step(Component(name="median")) == 0
    assert first_prunable_step(load_study("lr-sweep").pruner) == 2


def test_a_trials_pruning_checks_share_one_read_of_the_study_and_prune_as_the_pruner_would(tmp_path, monkeypatch):
    from search.store import _snapshot as snapshot
    from search.study.pruners import OneReadPerTrial

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    for value in (0.8, 0.9):
        trial = study.ask()
        for step in range(3):
            trial.report(value, step)
        study.tell(trial, value)
    reads = []
    real, real_finished = study.get_trials, snapshot.finished_trials

    def counted(*args, **kwargs):
        reads.append(1)
        return real(*args, **kwargs)

    def counted_finished(study):
        reads.append(1)
        return real_finished(study)

    study.get_trials = counted
    monkeypatch.setattr(snapshot, "finished_trials", counted_finished)
    median = optuna.pruners.MedianPruner(n_startup_trials=1)
    wrapped, plain = OneReadPerTrial(median, needs=1), optuna.pruners.MedianPruner(n_startup_trials=1)
    trial = study.ask()
    decisions = []
    for step in range(3):
        trial.report(0.1, step)
        frozen = study._storage.get_trial(trial._trial_id)
        decisions.append((wrapped.prune(study, frozen), plain.prune(study, frozen)))
    assert decisions == [(True, True)] * 3
    assert len(reads) == 1 + 3  # one read for the wrapped pruner's three checks, one each for the plain one
    reads.clear()
    starting = OneReadPerTrial(optuna.pruners.MedianPruner(n_startup_trials=3), needs=3)
    for _ in range(3):  # two complete trials, fewer than it needs: every check reads again
        starting.prune(study, frozen)
    assert len(reads) == 3


def test_patient_pruning_reads_once_per_trial_only_through_a_median_or_percentile_inside():
    from search.study.pruners import OneReadPerTrial

    def build(**options):
        return build_pruner(Component.model_validate({"name": "patient", **options}))

    assert isinstance(build(patience=1, wrapped={"name": "median"})._wrapped_pruner, OneReadPerTrial)
    assert not isinstance(build(patience=1, wrapped={"name": "successive_halving"})._wrapped_pruner, OneReadPerTrial)
    percentile = Component.model_validate({"name": "percentile", "percentile": 25.0})
    assert isinstance(build_pruner(percentile), OneReadPerTrial)
