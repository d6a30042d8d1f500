"""K-fold cross-validation of one recipe: ``train_folds(config, on_epoch_end, on_fold_end) -> TrainResult``.

The data is cut once into ``data.folds`` folds by person (``PreparedData.folds``, from the decode
cache: no decode per fold). Fold after fold, a fresh model trains on the other folds for the
config's epochs and predicts the held-out one. Each fold contributes its **last** epoch's
predictions and weights: the epoch is not chosen on the images it is scored on, so the pooled
figure is not lifted by picking each fold's luckiest epoch, and the fold models handed over are
the ones that made those predictions. How many epochs is the search's to choose, as a parameter.

The trial's value is the objective of the pooled out-of-fold predictions: every image validated
exactly once, by a model that never trained on it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from training.config import TrainConfig
from training.data.prepare import prepare_data
from training.loop import EpochCallback, TrainResult, fit
from training.metrics import classification_metrics, objective_value
from training.setup import free_device_memory, set_up

# fold k and the objectives of the folds done so far -> True to stop the trial (a pruner's check)
FoldCallback = Callable[[int, list[float]], bool | None]


def fold_checkpoint(output_dir: Path, k: int) -> Path:
    return Path(output_dir) / f"fold-{k}.safetensors"


def train_folds(
    config: TrainConfig, on_epoch_end: EpochCallback | None = None, on_fold_end: FoldCallback | None = None
) -> TrainResult:
    """Cross-validate ``config``: ``on_epoch_end(epoch, metrics)`` sees each fold's epochs (the
    metrics say which ``fold``), ``on_fold_end(k, values)`` each fold finished with more to come;
    either returning True stops the run. The result's metrics are those of the pooled out-of-fold
    predictions."""
    data = prepare_data(config.data, config.seed)
    labels = data.decoded.labels
    pooled = np.full((len(labels), data.num_classes), np.nan, dtype=np.float32)
    validated_in = np.full(len(labels), -1, dtype=np.int16)
    history: list[dict[str, Any]] = []
    values: list[float] = []
    checkpoints: list[Path] = []
    speeds: list[float] = []
    stopped, device = False, "cpu"
    for k in range(len(data.folds)):
        run = set_up(config, fold=k)
        device = str(run.device)
        checkpoint = fold_checkpoint(config.output_dir, k) if config.output_dir else None
        fold_epoch = None if on_epoch_end is None else _in_fold(on_epoch_end, k)
        fitted = fit(run, fold_epoch, checkpoint, last=True)
        history += [{**metrics, "fold": k} for metrics in fitted.history]
        speeds.append(fitted.images_per_second)
        pooled[run.data.val_idx] = fitted.probs
        validated_in[run.data.val_idx] = k
        values.append(objective_value(fitted.metrics, config.objective))
        checkpoints += [checkpoint] if checkpoint is not None else []
        more = k < len(data.folds) - 1
        stopped = fitted.stopped or (more and fitted.asked_to_stop) or (more and _stop(on_fold_end, k, values))
        del run, fitted  # the next fold's model and optimizer are made without this one's beside them
        free_device_memory()
        if stopped:
            break
    validated = ~np.isnan(pooled[:, 0])
    last = list({m["fold"]: m for m in history}.values())  # each fold's last epoch trained
    metrics = {**classification_metrics(labels[validated], pooled[validated]), "lr": history[-1]["lr"],
               "train_loss": float(np.mean([m["train_loss"] for m in last]))}  # fmt: skip
    return TrainResult(
        best_epoch=history[-1]["epoch"],
        best_metrics=metrics,
        history=history,
        train_images_per_second=float(np.mean(speeds)),
        checkpoint=None,
        device=device,
        class_names=data.decoded.class_names,
        stopped_early=stopped,
        objective=config.objective,
        fold_values=values,
        fold_checkpoints=checkpoints,
        out_of_fold=pooled,
        labels=labels,
        validated_in=validated_in,
    )


def _stop(on_fold_end: FoldCallback | None, k: int, values: list[float]) -> bool:
    return on_fold_end is not None and bool(on_fold_end(k, values))


def _in_fold(on_epoch_end: EpochCallback, k: int) -> EpochCallback:
    def called(epoch: int, metrics: dict[str, Any]) -> bool | None:
        return on_epoch_end(epoch, {**metrics, "fold": k})

    return called
