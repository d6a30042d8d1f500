from __future__ import annotations

import numpy as np
import pytest

from training.data.competition import competition_layout
from training.data.split import fold_splits, split_train_val
from training.errors import DataError


def test_no_person_on_both_sides_where_a_random_split_would_leak(competition_root):
    data = competition_layout(competition_root, (30, 60))
    train, val = split_train_val(data.labels, data.groups, 0.25, seed=0)
    assert set(data.groups[train]).isdisjoint(data.groups[val])
    assert len(train) + len(val) == len(data.labels)
    # The same ratio drawn at random puts most people on both sides.
    random_val = np.random.default_rng(0).permutation(len(data.labels))[: len(val)]
    random_train = np.setdiff1d(np.arange(len(data.labels)), random_val)
    assert set(data.groups[random_train]) & set(data.groups[random_val])


@pytest.mark.parametrize("ratio", [0.2, 0.25, 0.5, 0.75, 0.9])  # above a half the fold is the training side
def test_stratified_and_honours_val_ratio(ratio):
    labels = np.repeat(np.arange(4), [200, 100, 60, 40])
    train, val = split_train_val(labels, None, ratio, seed=3)
    assert abs(len(val) / len(labels) - ratio) < 0.02
    for c, n in enumerate([200, 100, 60, 40]):
        assert abs(np.sum(labels[val] == c) / n - ratio) < 0.05


def test_split_is_deterministic_by_seed():
    labels = np.repeat(np.arange(3), 50)
    groups = np.repeat(np.arange(30), 5)
    a = split_train_val(labels, groups, 0.2, seed=7)
    b = split_train_val(labels, groups, 0.2, seed=7)
    c = split_train_val(labels, groups, 0.2, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


THREE_PEOPLE = np.repeat(np.arange(3), 40)
TOO_FEW = "it has only 3 groups (people) and 30 images in its largest class"


@pytest.mark.parametrize(
    "groups, ratio, message",
    [
        (THREE_PEOPLE, 0.2, f"cuts the data into 5 parts, {TOO_FEW}: give a val_ratio of at least 0.333"),
        (THREE_PEOPLE, 0.8, f"cuts the data into 5 parts, {TOO_FEW}: give a val_ratio of at most 0.667"),
        # without groups, the largest class is the limit: 30 images of 120
        (None, 0.01, "cuts the data into 100 parts, it has only 120 images and 30 images in its largest class: "
                     "give a val_ratio of at least 0.0333"),
        (np.zeros(120, int), 0.5, "the data has one group (person): a train/validation split needs at least 2"),
    ],
)  # fmt: skip
def test_a_split_the_data_cannot_give_says_what_would_do(groups, ratio, message):
    labels = np.tile(np.arange(4), 30)
    with pytest.raises(DataError) as error:
        split_train_val(labels, groups, ratio, seed=0)
    assert message in str(error.value)
    # the bound it names works
    if "val_ratio of" in message:
        bound = float(message.rsplit(" ", 1)[1])
        train, val = split_train_val(labels, groups, bound, seed=0)
        assert len(train) and len(val)


def test_folds_validate_every_image_once_keep_each_person_on_one_side_and_follow_the_seed(competition_root):
    data = competition_layout(competition_root, (30, 60))
    folds = fold_splits(data.labels, data.groups, 4, seed=5)
    assert len(folds) == 4
    validated = np.concatenate([val for _, val in folds])
    assert sorted(validated.tolist()) == list(range(len(data.labels)))  # every image exactly once
    for train, val in folds:
        assert set(data.groups[train]).isdisjoint(data.groups[val])
        assert len(train) + len(val) == len(data.labels)
    again, other = fold_splits(data.labels, data.groups, 4, seed=5), fold_splits(data.labels, data.groups, 4, seed=6)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))  # the same folds, in the same order
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


def test_more_folds_than_people_says_how_many_there_are():
    with pytest.raises(DataError) as error:
        fold_splits(np.tile(np.arange(2), 30), np.repeat(np.arange(3), 20), 5, seed=0)
    assert "data.folds = 5, but the data has only 3 groups (people): give at most 3 folds" in str(error.value)
