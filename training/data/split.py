"""Train/validation split: stratified by class, grouped by person, deterministic by seed."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


def split_train_val(
    labels: np.ndarray, groups: np.ndarray | None, val_ratio: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of (train, validation); no group has images on both sides.

    scikit-learn's ``StratifiedGroupKFold`` with ``round(1 / val_ratio)`` folds keeps every
    class's share and every person on one side; its first fold is the validation set.
    """
    n_splits = max(2, round(1.0 / val_ratio))
    groups = np.arange(len(labels)) if groups is None else groups
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Classes rarer than the fold count are expected in long-tailed data.
        warnings.simplefilter("ignore", UserWarning)
        train, val = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return np.sort(train), np.sort(val)
