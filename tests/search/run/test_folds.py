"""Pruning between the folds of a cross-validated trial: paired, fold by fold, against the best."""

from __future__ import annotations

import optuna
import pytest

from search.run.folds import behind_the_best, wilcoxon_p
from search.study.schema import FoldPruning

BEST = [0.80, 0.70, 0.75, 0.82, 0.78]


def _trial_beside_the_best(best: list[float] | None) -> optuna.Trial:
    study = optuna.create_study(direction="maximize")
    if best is not None:
        done = study.ask()
        done.set_user_attr("fold_values", best)
        study.tell(done, sum(best) / len(best))
    return study.ask()


@pytest.mark.parametrize(
    "values, p_threshold, stops",
    [
        # the default, p < 0.3
        ([0.60, 0.50], None, True),  # below the best on each of two folds: p = 1/4
        ([0.60], None, False),  # one fold: fewer than min_folds
        ([0.60, 0.90], None, False),  # above it on one of two: not sure enough
        ([0.60, 0.90, 0.55], None, False),  # above it on one of three: not sure enough
        ([0.81, 0.71, 0.76, 0.83], None, False),  # above it on every fold
        # WilcoxonPruner's own, p < 0.1
        ([0.60, 0.50, 0.55, 0.62], 0.1, True),  # below the best on each of four folds: p = 1/16
        ([0.60, 0.50, 0.55], 0.1, False),  # three folds cannot say it at p < 0.1 (p = 1/8)
        ([0.60, 0.90, 0.55, 0.62], 0.1, False),  # above it on one fold: not sure enough
    ],
)
def test_a_trial_stops_between_folds_only_when_the_test_is_sure_it_is_behind(values, p_threshold, stops):
    rule = FoldPruning() if p_threshold is None else FoldPruning(p_threshold=p_threshold)
    assert behind_the_best(_trial_beside_the_best(BEST), values, rule) is stops


def test_no_stop_without_a_complete_trial_or_when_turned_off():
    assert not behind_the_best(_trial_beside_the_best(None), [0.1, 0.1, 0.1, 0.1], FoldPruning())
    assert not behind_the_best(_trial_beside_the_best(BEST), [0.1, 0.1, 0.1, 0.1], FoldPruning(p_threshold=0))


def test_the_p_value_is_the_one_sided_signed_rank_tests():
    assert wilcoxon_p([-0.1, -0.2, -0.3, -0.4]) == pytest.approx(1 / 16)
    assert wilcoxon_p([0.0, 0.0]) == 1.0
