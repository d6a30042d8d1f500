"""Validation metrics, all from scikit-learn on the same predictions."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Macro-F1 (the objective), accuracy, macro precision/recall, one-vs-rest ROC-AUC, per-class F1
    and the confusion matrix, for integer ``labels`` and class ``probs`` of shape (N, C)."""
    classes = np.arange(probs.shape[1])
    predicted = probs.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined precision of a never-predicted class is 0 here
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            labels, predicted, labels=classes, average="macro", zero_division=0
        )
        try:
            auc = float(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=classes))
        except ValueError:  # a class missing from the validation set leaves AUC undefined
            auc = float("nan")
    return {
        "macro_f1": float(f1),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "roc_auc": auc,
        "per_class_f1": skm.f1_score(labels, predicted, labels=classes, average=None, zero_division=0).tolist(),
        "confusion_matrix": skm.confusion_matrix(labels, predicted, labels=classes).tolist(),
    }
