"""Validation metrics, all from scikit-learn on the same predictions: every objective a study may
rank by (``OBJECTIVES``), and what the report and the notes show beside it."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm

from training.config import OBJECTIVES
from training.errors import ConfigError


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Every objective (macro-F1, accuracy, balanced accuracy, weighted F1, the worst class's F1 and
    one-vs-rest ROC-AUC), macro precision and recall, per-class F1 and the confusion matrix, for
    integer ``labels`` and class ``probs`` of shape (N, C). The worst class is the worst of those
    with validation images: a class without any has no F1 to speak of."""
    classes = np.arange(probs.shape[1])
    predicted = probs.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined precision of a never-predicted class is 0 here
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            labels, predicted, labels=classes, average="macro", zero_division=0
        )
        per_class = skm.f1_score(labels, predicted, labels=classes, average=None, zero_division=0)
        try:
            if probs.shape[1] == 2:  # scikit-learn's two-class form: the positive class's probability
                auc = float(skm.roc_auc_score(labels, probs[:, 1]))
            else:
                auc = float(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=classes))
        except ValueError:  # a class missing from the validation set leaves AUC undefined
            auc = float("nan")
        balanced = float(skm.balanced_accuracy_score(labels, predicted))
    present = np.unique(labels)
    return {
        "macro_f1": float(f1),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "balanced_accuracy": balanced,
        "weighted_f1": float(skm.f1_score(labels, predicted, labels=classes, average="weighted", zero_division=0)),
        "worst_class_f1": float(per_class[present].min()) if len(present) else float("nan"),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "roc_auc": auc,
        "per_class_f1": per_class.tolist(),
        "confusion_matrix": skm.confusion_matrix(labels, predicted, labels=classes).tolist(),
    }


# The objectives that a validation split without an image of some class leaves undefined.
NEEDS_EVERY_CLASS = ("roc_auc",)


def objective_value(metrics: dict[str, Any], objective: str) -> float:
    """The objective's value in an epoch's ``metrics``; a ``ConfigError`` where the validation split
    leaves it undefined, which every trial of the study would meet."""
    value = metrics[objective]
    if not math.isfinite(value):
        raise ConfigError(_undefined(objective))
    return value


def check_defined(objective: str, val_labels: np.ndarray, num_classes: int) -> None:
    """A ``ConfigError`` before anything trains where the validation split leaves ``objective``
    undefined: every trial would fail at the end of its first epoch."""
    if objective in NEEDS_EVERY_CLASS and len(np.unique(val_labels)) < num_classes:
        raise ConfigError(_undefined(objective))


def _undefined(objective: str) -> str:
    return (
        f"the objective {objective} ({OBJECTIVES[objective]}) is undefined on this validation split: it needs "
        "validation images of every class; choose another objective in the study file"
    )
