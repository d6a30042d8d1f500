"""The data's facts: the validation's resolution, how much one image moves macro-F1."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from training import DataFacts


@pytest.mark.parametrize("per_class", [(14, 150, 30), (1, 5, 2), (0, 7, 40, 3)])
def test_one_image_of_the_rarest_class_moves_macro_f1_as_scikit_learn_scores_it(per_class):
    names = tuple(f"c{i}" for i in range(len(per_class)))
    facts = DataFacts("x", names, train_images=100, val_images=sum(per_class), val_per_class=per_class)
    labels = np.repeat(np.arange(len(per_class)), per_class)
    counts = np.array(per_class, dtype=float)
    counts[counts == 0] = np.inf
    rarest, largest = int(np.argmin(counts)), int(np.argmax(per_class))
    predicted = labels.copy()
    predicted[np.flatnonzero(labels == rarest)[0]] = largest
    validated = [c for c, n in enumerate(per_class) if n]
    expected = 1.0 - f1_score(labels, predicted, average="macro", labels=validated)
    name, count, moves = facts.one_image()
    assert (name, count) == (names[rarest], per_class[rarest]) and moves == pytest.approx(expected)


def test_one_image_is_unknown_with_a_single_validated_class():
    assert DataFacts("x", ("a", "b"), train_images=5, val_images=3, val_per_class=(3, 0)).one_image() is None
