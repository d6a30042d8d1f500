"""Every sampler and pruner a study may name builds and drives a real (in-memory) Optuna study."""

from __future__ import annotations

import warnings

import optuna
import pytest

from search.study import Component, load_study
from search.study.distributions import sample
from search.study.pruners import PRUNERS, build_pruner, first_prunable_step
from search.study.samplers import SAMPLERS, build_sampler
from training import ConfigError

GRID_SPACE = [
    "space.lr={choices: [0.001, 0.01]}",
    "space.scheduler={cosine: {}, step: {step_size: {choices: [1, 2]}}}",
    "space.loss={cross_entropy: {}, focal: {focal_gamma: {choices: [1.0, 2.0]}}}",
    "enqueue=[]",
]


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_samples_the_four_names(name):
    spec = load_study("lr-sweep", GRID_SPACE if name == "grid" else ["enqueue=[]"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(direction="maximize", sampler=build_sampler(Component(name=name), spec.space, 0))
        for _ in range(4):
            trial = study.ask()
            params = sample(trial, spec.space)
            study.tell(trial, params["lr"])
    assert all({"lr", "scheduler", "loss", "accumulation_steps"} <= set(t.params) for t in study.trials)


def test_seeded_samplers_repeat_themselves():
    spec = load_study("lr-sweep", ["enqueue=[]"])

    def draws(seed):
        study = optuna.create_study(sampler=build_sampler(Component(name="tpe"), spec.space, seed))
        return [sample(study.ask(), spec.space)["lr"] for _ in range(3)]

    assert draws(5) == draws(5) != draws(6)


def test_tpe_samples_from_the_finished_trials_read_once_per_trial_as_plain_tpe_does(tmp_path, monkeypatch):
    """Each trial's four parameters share one read of the finished trials, and the draws are plain
    TPE's: a running trial (another worker's) is not learned from by either."""
    from search.study import snapshot
    from search.study.samplers import OneReadPerTrialSampler

    spec = load_study("lr-sweep", ["enqueue=[]"])
    tpe = Component(name="tpe", n_startup_trials=3)
    reads, whole = [], []
    real, real_get = snapshot.finished_trials, optuna.Study._get_trials
    monkeypatch.setattr(snapshot, "finished_trials", lambda study: reads.append(1) or real(study))

    def every_trial_read(study, deepcopy=True, states=None, use_cache=False):
        whole.append(states is None)  # every trial, running ones whole
        return real_get(study, deepcopy, states, use_cache)

    monkeypatch.setattr(optuna.Study, "_get_trials", every_trial_read)

    def draws(sampler, name):
        assert isinstance(sampler, OneReadPerTrialSampler) == (name == "shared")
        study = optuna.create_study(storage=f"sqlite:///{tmp_path}/{name}.db", direction="maximize", sampler=sampler)
        study.ask()  # running, never told: a trial below the finished ones, as a slow worker's is
        found = []
        for _ in range(8):
            trial = study.ask()
            params = sample(trial, spec.space)
            found.append(params)
            study.tell(trial, -abs(params["lr"] - 1e-3))
        return found

    shared = draws(build_sampler(tpe, spec.space, 7), "shared")
    assert len(reads) == 9  # one per trial, the one left running included
    assert not any(whole)  # the search space (every trial) came from that read, running trials by number
    assert shared == draws(optuna.samplers.TPESampler(seed=7, n_startup_trials=3), "plain")
    assert any(whole)  # plain TPE reads every trial whole for its search space


def test_grid_needs_choices():
    spec = load_study("lr-sweep")
    with pytest.raises(ConfigError, match="grid sampler needs choices for 'lr'"):
        build_sampler(Component(name="grid"), spec.space, 0)


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
    from search.study import snapshot
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
