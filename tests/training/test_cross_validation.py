"""K-fold cross-validation of one recipe: the pooled out-of-fold predictions, each fold's last
epoch and model, and a stop asked for between folds."""

from __future__ import annotations

import numpy as np

from tests.conftest import tiny_config
from training.checkpoint import read_meta
from training.cross_validation import train_folds
from training.data.prepare import prepare_data
from training.metrics import classification_metrics


def test_every_image_is_validated_once_and_the_value_is_that_of_the_pooled_predictions(tmp_path):
    config = tiny_config(data={"folds": 3}, epochs=2, output_dir=tmp_path)
    seen = []
    result = train_folds(config, lambda epoch, metrics: seen.append((metrics["fold"], epoch)) and False)
    data = prepare_data(config.data, config.seed)
    assert seen == [(k, e) for k in range(3) for e in range(2)]
    assert result.out_of_fold.shape == (len(data.decoded.labels), data.num_classes)
    assert not np.isnan(result.out_of_fold).any()  # every image, validated in its own fold
    assert np.array_equal(result.labels, data.decoded.labels)
    pooled = classification_metrics(data.decoded.labels, result.out_of_fold)
    assert result.best_value == pooled["macro_f1"]
    assert len(result.fold_values) == 3 and result.epochs_run == 6 and not result.stopped_early
    # each fold keeps its last epoch's model: the one that made the pooled predictions
    assert [read_meta(path)["epoch"] for path in result.fold_checkpoints] == [1, 1, 1]
    for k, (_, val) in enumerate(data.folds):
        assert read_meta(result.fold_checkpoints[k])["metrics"]["macro_f1"] == result.fold_values[k]
        assert np.sum(read_meta(result.fold_checkpoints[k])["metrics"]["confusion_matrix"]) == len(val)


def test_a_stop_between_folds_leaves_the_rest_unvalidated():
    config = tiny_config(data={"folds": 3}, epochs=1)
    result = train_folds(config, on_fold_end=lambda k, values: k == 0)
    assert result.stopped_early and len(result.fold_values) == 1
    assert np.isnan(result.out_of_fold[:, 0]).sum() > 0
