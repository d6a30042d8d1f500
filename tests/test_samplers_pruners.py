"""Every sampler and pruner a study may name builds and drives a real (in-memory) Optuna study."""

from __future__ import annotations

import warnings

import optuna
import pytest

from search.study import Component, SearchSpace, load_study
from search.study.distributions import fit_space, recorded_distributions, sample
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


@pytest.mark.parametrize(
    "change, message",
    [
        ("space.loss={cross_entropy: {}, focal: {focal_gamma: {low: 0.5, high: 3.0}}}",
         "sampled 'loss' from choices ['cross_entropy', 'focal', 'label_smoothing', 'f1']; the study file now gives "
         "choices ['cross_entropy', 'focal']"),
        ("space.lr={low: 0.001, high: 0.01}", "sampled 'lr' from floats 0.0003..0.03 (log scale); the study file now "
         "gives floats 0.001..0.01,"),
        ("space.accumulation_steps={low: 1, high: 8}", "sampled 'accumulation_steps' from choices [1, 2, 4, 8]; the "
         "study file now gives integers 1..8,"),
        ("space.scheduler={step: {step_size: {low: 1.0, high: 3.5}}, cosine: {}, plateau: {}}",
         "sampled 'step_size' from integers 1..3; the study file now gives floats 1..3.5,"),
        ("space.scheduler={step: {step_size: {low: 1, high: 5}}, cosine: {}, plateau: {}}", None),  # fields dropped
        ("space.lr={low: 0.001, high: 0.01, log: true}", None),  # a new range of the same kind is fine
    ],
)  # fmt: skip
def test_a_changed_space_the_studys_trials_cannot_take_is_refused_before_a_trial(change, message):
    study, _ = _study_with_every_branch_sampled()
    changed = load_study("lr-sweep", ["enqueue=[]", change]).space
    recorded = recorded_distributions(study._storage, study.study_name)
    if message is None:
        fit_space(study.study_name, recorded, changed)
        return
    with pytest.raises(ConfigError) as refused:
        fit_space(study.study_name, recorded, changed)
    assert message in str(refused.value) and "(--set name=NEW_NAME)" in str(refused.value)


def test_the_same_choices_in_another_order_continue_the_study_in_the_order_its_trials_recorded():
    study, space = _study_with_every_branch_sampled()
    changes = [
        "space.loss={f1: {}, label_smoothing: {smoothing: {low: 0.05, high: 0.1}}, cross_entropy: {}, "
        "focal: {focal_gamma: {low: 0.5, high: 3.0}}}",
        "space.accumulation_steps={choices: [8, 1, 4, 2]}",
    ]
    changed = load_study("lr-sweep", ["enqueue=[]", *changes]).space
    fitted = fit_space(study.study_name, recorded_distributions(study._storage, study.study_name), changed)
    assert list(fitted["loss"]) == list(space["loss"]) and fitted["accumulation_steps"].choices == [1, 2, 4, 8]
    assert fitted["loss"]["label_smoothing"]["smoothing"].low == 0.05  # the edit itself is kept
    with pytest.raises(ValueError, match="does not support dynamic value space"):
        sample(study.ask(), changed)  # what Optuna makes of the reordered lists themselves
    for _ in range(6):
        trial = study.ask()
        sample(trial, fitted)
        study.tell(trial, 0.5)


def _study_with_every_branch_sampled() -> tuple[optuna.Study, SearchSpace]:
    space = load_study("lr-sweep", ["enqueue=[]"]).space
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):  # every scheduler and loss branch sampled at least once
        trial = study.ask()
        sample(trial, space)
        study.tell(trial, 0.5)
    return study, space
