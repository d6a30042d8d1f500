"""Every sampler a study may name builds and drives a real (in-memory) Optuna study."""

from __future__ import annotations

import warnings

import optuna
import pytest

from search.study import Component, load_study
from search.study.distributions import sample
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


@pytest.mark.slow
def test_tpe_samples_from_the_finished_trials_read_once_per_trial_as_plain_tpe_does(tmp_path, monkeypatch):
    """Each trial's four parameters share one read of the finished trials, and the draws are plain
    TPE's: a running trial (another worker's) is not learned from by either."""
    from search.store import _snapshot as snapshot
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
