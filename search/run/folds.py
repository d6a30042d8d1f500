"""Pruning between the folds of a cross-validated trial: after each fold, the trial's fold values
so far against the best complete trial's on the same folds, paired fold by fold.

Within a fold, the study's pruner compares epochs as for any trial (a fold's epoch is its own
step). Between folds, the rule is Optuna's ``WilcoxonPruner``'s: a one-sided Wilcoxon signed-rank
test that the trial is worse than the best, stopping it when ``p < p_threshold``, never while its
mean over those folds is as good as the best's, and never before ``min_folds`` folds are done.
Every trial sees the same folds in the same order, so fold k of one trial is fold k of the best.
"""

from __future__ import annotations

import math
import warnings

import optuna

from search.store import CONFIRMS
from search.study.schema import FoldPruning


def behind_the_best(trial: optuna.Trial, values: list[float], rule: FoldPruning) -> bool:
    """Whether the trial's ``values`` (its objective on folds 0..k) are, with the test's confidence,
    below the best complete trial's on the same folds."""
    if rule.p_threshold <= 0 or len(values) < rule.min_folds:
        return False
    try:
        best = trial.study.best_trial  # a few small queries on the RDB storage: the best value's trial
    except ValueError:  # no complete trial yet
        return False
    if CONFIRMS in best.system_attrs:  # a confirmation run's folds are cut by its own seed: not these
        return False
    return behind(values, best.user_attrs.get("fold_values") or [], rule)


def behind(values: list[float], theirs: list[float], rule: FoldPruning) -> bool:
    """The rule itself: whether ``values`` (folds 0..k) are, with the test's confidence, below
    ``theirs`` on the same folds."""
    if rule.p_threshold <= 0:
        return False
    pairs = [(mine, their) for mine, their in zip(values, theirs) if _finite(mine) and _finite(their)]
    if len(pairs) < rule.min_folds or sum(m - t for m, t in pairs) >= 0:
        return False
    return wilcoxon_p([m - t for m, t in pairs]) < rule.p_threshold


def wilcoxon_p(differences: list[float]) -> float:
    """The one-sided p-value that the differences lie below zero (scipy's signed-rank test, exact
    for few folds); 1 where they are all zero."""
    from scipy.stats import wilcoxon

    if not any(differences):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ties and zeros with few folds: scipy warns of its approximation
        return float(wilcoxon(differences, alternative="less").pvalue)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
