"""A study's results as a notebook's cells use them: the study, its data, its search and its best
model, read from the storage and the artifact store, as tables (pandas) and pictures.

``search notebook`` writes cells that call these functions; a user changes a cell, or writes one
more, with the same names. A picture is a ``Picture``: Jupyter shows it as a PNG.
"""

from search.results.model import (
    Predictions,
    confusion,
    confusion_picture,
    export_best,
    mistakes,
    mistakes_picture,
    part_table,
    per_class_scores,
    predicted_shares,
    submission,
    validation_predictions,
)
from search.results.study import (
    Picture,
    StudyResults,
    class_chart,
    class_counts,
    importances,
    leaders,
    left_out,
    open_results,
    part_counts,
    people,
    sample_grid,
    trials_table,
)

__all__ = [
    "Picture",
    "Predictions",
    "StudyResults",
    "class_chart",
    "class_counts",
    "confusion",
    "confusion_picture",
    "export_best",
    "importances",
    "leaders",
    "left_out",
    "mistakes",
    "mistakes_picture",
    "open_results",
    "part_counts",
    "part_table",
    "people",
    "per_class_scores",
    "predicted_shares",
    "sample_grid",
    "submission",
    "trials_table",
    "validation_predictions",
]
