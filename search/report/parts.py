"""The competition's own breakdown of an 18-class confusion matrix: each part of the label (mask
state, gender, age band) as a classifier of its own, its macro-F1, and the confusions in its terms
("age 30-59 taken for >=60"). Read from the class names (``mask/male/<30``), so any age bounds do."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training import PARTS, part_labels


def is_competition(class_names: Sequence[str]) -> bool:
    """Whether the classes are the competition's 18 (mask × gender × age band)."""
    return len(class_names) == 18 and all(name.count("/") == 2 for name in class_names)


def part_values(class_names: Sequence[str]) -> dict[str, list[str]]:
    """Each part's values by index, as the class names spell them (``age``: ``<30``, ``30-59``, ``>=60``)."""
    labels = part_labels(np.arange(len(class_names)))
    values: dict[str, list[str]] = {}
    for k, part in enumerate(PARTS):
        count = int(labels[part].max()) + 1
        values[part] = [class_names[int(np.argmax(labels[part] == v))].split("/")[k] for v in range(count)]
    return values


def part_confusion(matrix: np.ndarray, part: str) -> np.ndarray:
    """The 18-class confusion matrix (rows true, columns predicted) summed into one part's values."""
    of = part_labels(np.arange(len(matrix)))[part]
    size = int(of.max()) + 1
    folded = np.zeros((size, size), dtype=np.int64)
    np.add.at(folded, (of[:, None], of[None, :]), matrix)
    return folded


def macro_f1(matrix: np.ndarray) -> float:
    """Macro-F1 of a confusion matrix, over the classes that are true or predicted at least once."""
    true_positive = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    seen = (predicted + actual) > 0
    f1 = 2 * true_positive[seen] / (predicted[seen] + actual[seen])
    return float(f1.mean()) if seen.any() else float("nan")


def part_scores(matrix: Sequence[Sequence[int]]) -> dict[str, float]:
    """Each part's macro-F1, read from the 18-class confusion matrix."""
    counts = np.asarray(matrix)
    return {part: macro_f1(part_confusion(counts, part)) for part in PARTS}


def confused_parts(matrix: Sequence[Sequence[int]], class_names: Sequence[str], top: int = 5) -> list[str]:
    """The most frequent confusions in the parts' terms, most images first: "age '30-59' taken for
    '>=60': 12 of 40 images"."""
    counts, values = np.asarray(matrix), part_values(class_names)
    found = []
    for part in PARTS:
        folded = part_confusion(counts, part)
        for true, predicted in zip(*np.nonzero(folded - np.diag(np.diag(folded)))):
            n, of = int(folded[true, predicted]), int(folded[true].sum())
            taken = f"{part} '{values[part][true]}' taken for '{values[part][predicted]}'"
            found.append((n, f"{taken}: {n} of {of} images"))
    return [text for _, text in sorted(found, key=lambda item: -item[0])[:top]]
