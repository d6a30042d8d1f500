from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from training import ConfigError
from training.metrics import check_defined, classification_metrics, objective_value


def test_metrics_equal_scikit_learn_on_the_same_predictions():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [40, 20, 8, 4])
    probs = rng.dirichlet(np.ones(4), len(labels))
    probs[np.arange(len(labels)), labels] += rng.random(len(labels))  # better than chance
    probs /= probs.sum(1, keepdims=True)
    pred = probs.argmax(1)
    m = classification_metrics(labels, probs)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert m["macro_precision"] == pytest.approx(skm.precision_score(labels, pred, average="macro"))
    assert m["macro_recall"] == pytest.approx(skm.recall_score(labels, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, probs, multi_class="ovr"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(labels, pred, average="weighted"))
    assert m["worst_class_f1"] == pytest.approx(min(skm.f1_score(labels, pred, average=None)))
    assert m["per_class_f1"] == pytest.approx(skm.f1_score(labels, pred, average=None).tolist())
    assert m["confusion_matrix"] == skm.confusion_matrix(labels, pred).tolist()
    assert m["macro_f1"] != pytest.approx(m["accuracy"])  # imbalance: they differ


def test_a_class_missing_from_validation_keeps_the_shape():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    m = classification_metrics(labels, probs)
    assert len(m["per_class_f1"]) == 3 and np.array(m["confusion_matrix"]).shape == (3, 3)
    assert np.isnan(m["roc_auc"])
    assert m["worst_class_f1"] == pytest.approx(2 / 3)  # of the two classes with validation images, not the third's 0
    assert objective_value(m, "macro_f1") == m["macro_f1"]
    with pytest.raises(
        ConfigError,
        match=r"^the objective roc_auc \(one-vs-rest ROC-AUC\) is undefined on this "
        "validation split: it needs validation images of every class; choose another objective",
    ):
        objective_value(m, "roc_auc")  # fmt: skip


def test_two_classes_have_their_roc_auc_and_a_split_missing_a_class_leaves_it_undefined_before_training():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    m = classification_metrics(labels, probs)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, probs[:, 1]))
    check_defined("roc_auc", labels, 2)  # both classes validated: nothing said
    with pytest.raises(ConfigError, match=r"^the objective roc_auc \(one-vs-rest ROC-AUC\) is undefined"):
        check_defined("roc_auc", np.array([0, 0, 1]), 3)
    check_defined("macro_f1", np.array([0, 0, 1]), 3)  # defined whatever the split holds
