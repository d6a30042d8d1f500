"""An edited space against the distributions a study's trials recorded: what one study can mix, and
what it cannot."""

from __future__ import annotations

import optuna
import pytest

from search.study import SearchSpace, load_study
from search.study.distributions import fit_space, recorded_distributions, sample
from training import ConfigError


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
