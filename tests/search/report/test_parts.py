"""The competition's parts (mask, gender, age band) read from the 18-class confusion matrix."""

from __future__ import annotations

import numpy as np

from search.report.parts import confused_parts, part_scores
from training import competition_class_names


def test_the_competitions_breakdown_reads_each_part_from_the_confusion_matrix():
    names = competition_class_names((30, 60))
    matrix = np.eye(18, dtype=int) * 10
    matrix[1, 2] = 4  # mask/male/30-59 taken for mask/male/>=60: the age band alone is wrong
    matrix[0, 6] = 3  # mask/male/<30 taken for incorrect/male/<30: the mask state alone
    scores = part_scores(matrix)
    assert scores["gender"] == 1.0 and scores["age"] < 1.0 and scores["mask"] < 1.0
    assert confused_parts(matrix, names) == [
        "age '30-59' taken for '>=60': 4 of 64 images",
        "mask 'mask' taken for 'incorrect': 3 of 67 images",
    ]
