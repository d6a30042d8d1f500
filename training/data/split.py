"""Train/validation split: stratified by class, grouped by person, deterministic by seed."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from training.errors import DataError


def split_train_val(
    labels: np.ndarray, groups: np.ndarray | None, val_ratio: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of (train, validation); no group has images on both sides.

    scikit-learn's ``StratifiedGroupKFold`` keeps every class's share and every person on one
    side. Its first fold is the smaller side: the validation set with ``round(1 / val_ratio)``
    folds when ``val_ratio`` is at most a half, else the training set with
    ``round(1 / (1 - val_ratio))`` folds.
    """
    small = min(val_ratio, 1.0 - val_ratio)
    n_splits = max(2, round(1.0 / small))
    groups = np.arange(len(labels)) if groups is None else groups
    found = len(np.unique(groups))
    unit = "images" if found == len(labels) else "groups (people)"
    if found < 2:
        one = "one image" if unit == "images" else "one group (person)"
        raise DataError(f"the data has {one}: a train/validation split needs at least 2")
    # scikit-learn cannot cut more parts than there are groups, nor than the largest class has images
    largest = int(np.bincount(labels).max())
    parts = min(found, largest)
    if n_splits > parts:
        bound = f"at least {1 / parts:.3g}" if val_ratio <= 0.5 else f"at most {1 - 1 / parts:.3g}"
        raise DataError(
            f"data.val_ratio = {val_ratio:g} cuts the data into {n_splits} parts, it has only {found} {unit}"
            f" and {largest} images in its largest class: give a val_ratio of {bound}"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Classes rarer than the fold count are expected in long-tailed data.
        warnings.simplefilter("ignore", UserWarning)
        rest, fold = next(splitter.split(np.zeros(len(labels)), labels, groups))
    train, val = (rest, fold) if val_ratio <= 0.5 else (fold, rest)
    return np.sort(train), np.sort(val)


def fold_splits(
    labels: np.ndarray, groups: np.ndarray | None, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` (train, validation) index pairs for cross-validation: every image is validated in
    exactly one fold, no group (person) has images on both sides of any fold, and each fold keeps
    every class's share as far as the groups allow (scikit-learn's ``StratifiedGroupKFold``, the
    splitter of ``split_train_val``). The same seed gives the same folds in the same order."""
    groups = np.arange(len(labels)) if groups is None else groups
    found = len(np.unique(groups))
    if found < folds:
        unit = "images" if found == len(labels) else "groups (people)"
        raise DataError(f"data.folds = {folds}, but the data has only {found} {unit}: give at most {found} folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes rarer than the fold count: long-tailed data
        return [(np.sort(train), np.sort(val)) for train, val in splitter.split(np.zeros(len(labels)), labels, groups)]


def unvalidated_classes(labels: np.ndarray, val_idx: np.ndarray, class_names: Sequence[str]) -> str | None:
    """What to say of the classes the validation split has no image of, or None when it has them all:
    macro-F1 averages over every class, and such a class, never true, scores 0 unless it is never
    predicted either, so no trial can reach 1 (the ranking of trials holds; the figure misleads).
    Rare classes of few people."""
    validated = np.bincount(labels[val_idx], minlength=len(class_names))
    missing = [c for c in range(len(class_names)) if not validated[c]]
    if not missing:
        return None
    counts = np.bincount(labels, minlength=len(class_names))
    listed = ", ".join(f"{class_names[c]!r} ({counts[c]} in all)" for c in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return (
        f"the validation split has no image of {len(missing)} of {len(class_names)} classes: {listed}{more}; "
        f"macro-F1 counts each as 0, so no trial can score above {1 - len(missing) / len(class_names):.2f} (trials "
        "still rank fairly). Give those classes more images, or a larger data.val_ratio"
    )
