"""The ranking by configuration: a trial of the search with its confirmation runs, scored by their
mean, the spread said; and the trials within the noise of a confirmed best."""

from __future__ import annotations

import statistics

import optuna
from optuna.trial import TrialState, create_trial

from search.noise import near_the_best
from search.ranking import best, configurations, confirms, ranked
from search.store import CONFIRMS

X = optuna.distributions.FloatDistribution(0, 1)


def _trial(value: float | None, x: float, confirming: int | None = None, seed: int = 1, state=TrialState.COMPLETE):
    attrs = {CONFIRMS: {"trial": confirming, "seed": seed}} if confirming is not None else {}
    return create_trial(state=state, value=value, params={"x": x}, distributions={"x": X}, system_attrs=attrs)


def _study(*trials) -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study(direction="maximize")
    for t in trials:
        study.add_trial(t)
    return study.get_trials(deepcopy=False)


def test_a_confirmed_configuration_ranks_by_the_mean_of_its_runs_and_its_runs_are_not_ranked_alone():
    trials = _study(
        _trial(0.80, 0.1),  # 0: lucky; its runs again score 0.58 and 0.62
        _trial(0.70, 0.2),  # 1: never confirmed
        _trial(0.68, 0.3),  # 2: its runs again score 0.69 and 0.67
        _trial(0.58, 0.1, confirming=0, seed=1),
        _trial(0.62, 0.1, confirming=0, seed=2),
        _trial(0.69, 0.3, confirming=2, seed=1),
        _trial(0.67, 0.3, confirming=2, seed=2),
        _trial(None, 0.3, confirming=2, seed=3, state=TrialState.RUNNING),  # not a run yet
        _trial(None, 0.1, confirming=0, seed=3, state=TrialState.FAIL),
    )
    leaders = configurations(trials)
    assert [r.trial.number for r in leaders] == [1, 2, 0]
    means = [0.70, statistics.fmean([0.68, 0.69, 0.67]), statistics.fmean([0.8, 0.58, 0.62])]
    assert [r.mean for r in leaders] == means
    assert [[t.number for t in r.runs] for r in leaders] == [[1], [2, 5, 6], [0, 3, 4]]
    assert leaders[0].sd is None and leaders[1].sd == statistics.stdev([0.68, 0.69, 0.67])
    assert leaders[1].spread() == "mean of 3 runs, trials 2, 5 and 6: 0.670-0.690, sd 0.010"
    assert leaders[1].as_json() == {"trials": [2, 5, 6], "values": [0.68, 0.69, 0.67], "mean": leaders[1].mean,
                                    "sd": leaders[1].sd}  # fmt: skip
    assert ranked(trials) == [trials[1], trials[2], trials[0]] and best(trials) is trials[1]
    assert [confirms(t) for t in trials] == [None, None, None, 0, 0, 2, 2, 2, 0]


def test_a_study_without_confirmation_runs_ranks_as_before_equal_ones_by_number():
    trials = _study(_trial(0.7, 0.1), _trial(0.9, 0.2), _trial(0.7, 0.3), _trial(None, 0.4, state=TrialState.PRUNED))
    assert [r.trial.number for r in configurations(trials)] == [1, 0, 2]
    assert [r.mean for r in configurations(trials)] == [0.9, 0.7, 0.7]  # a single run's value, exactly


def test_trials_within_one_standard_error_of_a_confirmed_best_are_named():
    trials = _study(
        _trial(0.70, 0.1),
        _trial(0.68, 0.2),  # 0.70 - 0.68 = 0.02: within the best's standard error (0.0346)
        _trial(0.50, 0.3),
        _trial(0.76, 0.1, confirming=0),
        _trial(0.64, 0.1, confirming=0, seed=2),
    )
    leaders = configurations(trials)
    error = statistics.stdev([0.70, 0.76, 0.64]) / 3**0.5
    assert near_the_best(leaders, None) == [
        f"trial 1 is within one standard error of the best ({error:.4f}, from its 3 runs)"
    ]
