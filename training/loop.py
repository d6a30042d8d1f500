"""The training loop: ``train(config, on_epoch_end) -> TrainResult``.

One epoch = ``train_one_epoch`` then ``evaluate``; the caller's ``on_epoch_end`` sees the
validation metrics and may stop the run (that is how a pruner stops a trial). The best epoch by
the run's objective (macro-F1 unless the study chose another) is checkpointed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.accelerate import autocast
from training.checkpoint import checkpoint_meta, save_checkpoint
from training.config import DEFAULT_OBJECTIVE, TrainConfig
from training.data.loader import BatchLoader
from training.errors import NonFiniteLossError
from training.metrics import classification_metrics, objective_value
from training.schedulers import Schedule
from training.setup import InputPipe, Training, set_up

EpochCallback = Callable[[int, dict[str, Any]], bool | None]


@dataclass
class TrainResult:
    """What a run leaves: the best epoch's metrics and checkpoint, and every epoch's history."""

    best_epoch: int
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    train_images_per_second: float
    checkpoint: Path | None
    device: str
    class_names: tuple[str, ...] = ()
    stopped_early: bool = False
    objective: str = DEFAULT_OBJECTIVE  # the metric that picked the best epoch
    # cross-validated (``data.folds``): each fold's objective, its model, and the pooled out-of-fold
    # class probabilities, a row per image (NaN where a stopped run left it unvalidated)
    fold_values: list[float] = field(default_factory=list)
    fold_checkpoints: list[Path] = field(default_factory=list)
    out_of_fold: np.ndarray | None = None
    labels: np.ndarray | None = None  # the true class of each row of out_of_fold
    validated_in: np.ndarray | None = None  # the fold that validated each row (-1: none)
    epochs_run: int = field(init=False)

    def __post_init__(self) -> None:
        self.epochs_run = len(self.history)

    @property
    def best_value(self) -> float:
        """The objective at the best epoch."""
        return float(self.best_metrics[self.objective])


def accumulation_weights(batch_sizes: list[int], steps: int) -> list[tuple[float, bool]]:
    """For each micro-batch: the factor its mean loss is scaled by, and whether the optimizer steps.

    Micro-batches are grouped ``steps`` at a time; each is weighted by its share of its group, so a
    group's summed gradient is the gradient of the mean over the whole group. A trailing partial
    group is weighted by its own size and still steps.
    """
    out: list[tuple[float, bool]] = []
    for start in range(0, len(batch_sizes), steps):
        group = batch_sizes[start : start + steps]
        total = sum(group)
        out += [(size / total, i == len(group) - 1) for i, size in enumerate(group)]
    return out


def train_one_epoch(
    model: nn.Module,
    loader: BatchLoader,
    epoch: int,
    pipe: InputPipe,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    accumulation_steps: int,
) -> tuple[float, int, float]:
    """One pass over the training split; returns (mean loss, images seen, seconds)."""
    model.train()
    weights = accumulation_weights(loader.batch_sizes(), accumulation_steps)
    # The loss is summed on the device and read once, at the end: no host sync per step.
    loss_sum = torch.zeros((), device=pipe.device)
    seen = 0
    started = time.perf_counter()
    for (images, labels), (weight, step) in zip(loader.batches(epoch), weights):
        labels = labels.to(pipe.device, non_blocking=True)
        with autocast(pipe.device):
            loss = loss_fn(model(pipe(images)), labels)
        (loss * weight).backward()
        loss_sum += loss.detach().float() * len(labels)
        seen += len(labels)
        if step:
            optimizer.step()
            optimizer.zero_grad(set_to_none=not getattr(model, "keeps_grads", False))
            schedule.after_optimizer_step()
    mean_loss = loss_sum.item() / max(seen, 1)
    seconds = time.perf_counter() - started
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError(epoch, mean_loss)
    return mean_loss, seen, seconds


def train_epoch(run: Training, epoch: int, accumulation_steps: int | None = None) -> tuple[float, int, float]:
    """``train_one_epoch`` on a set-up run: (mean loss, images seen, seconds)."""
    steps = accumulation_steps or run.config.accumulation_steps
    return train_one_epoch(
        run.forward, run.train_loader, epoch, run.pipe, run.loss_fn, run.optimizer, run.schedule, steps
    )


@torch.inference_mode()
def predict_probs(model: nn.Module, loader: BatchLoader, pipe: InputPipe) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and labels for every sample of ``loader``, in eval mode."""
    model.eval()
    probs, labels = [], []
    for images, y in loader.batches(0):
        with autocast(pipe.device):
            logits = model(pipe(images))
        probs.append(torch.softmax(logits.float(), dim=1))
        labels.append(y)
    # gathered where they were made and read back once: a read per batch would stall every batch
    return torch.cat(probs).cpu().numpy(), torch.cat(labels).cpu().numpy()


def evaluate(model: nn.Module, loader: BatchLoader, pipe: InputPipe) -> dict[str, Any]:
    return validate(model, loader, pipe)[0]


def validate(model: nn.Module, loader: BatchLoader, pipe: InputPipe) -> tuple[dict[str, Any], np.ndarray]:
    """The validation metrics, and the class probabilities they were computed from."""
    probs, labels = predict_probs(model, loader, pipe)
    return classification_metrics(labels, probs), probs


def train_on_all_data(config: TrainConfig, validation_values: Sequence[float], out: Path) -> Path:
    """A trial's recipe again on every image, its validation split included, for as many epochs as
    ``validation_values`` holds (the trial's objective per epoch up to its best: where it peaked), as
    the final model of a competition. The schedule steps as in the trial, the plateau scheduler
    reading the trial's own values since nothing is held out to measure new ones. The last epoch's
    weights are the checkpoint; its header has no metrics, only what it was trained on."""
    run = set_up(config, all_data=True)
    rates = []
    for epoch, value in enumerate(validation_values):
        rates.append(run.schedule.lr())
        train_epoch(run, epoch)
        run.schedule.after_epoch(value)
    meta = checkpoint_meta(config, run.data.decoded.class_names, run.norm, len(validation_values) - 1, {})
    meta["trained_on"] = {"images": len(run.data.train_idx), "held_out": 0, "epoch_lr": rates}
    return save_checkpoint(out, run.model, meta)


@dataclass
class Fitted:
    """What the epochs of one split left: every epoch's metrics, the chosen epoch's metrics and
    validation probabilities, whether the caller stopped it, and the training throughput."""

    history: list[dict[str, Any]]
    epoch: int
    metrics: dict[str, Any]
    probs: np.ndarray | None
    stopped: bool  # before its last epoch
    images_per_second: float
    asked_to_stop: bool = False  # on_epoch_end returned True, at any epoch


def fit(run: Training, on_epoch_end: EpochCallback | None, checkpoint: Path | None, *, last: bool = False) -> Fitted:
    """Train ``run`` epoch by epoch, validating after each; ``on_epoch_end`` returning True stops it.
    The chosen epoch is the best by the objective, or with ``last`` the last one trained; its
    weights go to ``checkpoint`` (when given)."""
    config, schedule = run.config, run.schedule
    history: list[dict[str, Any]] = []
    chosen = Fitted(history, -1, {}, None, False, 0.0)
    best_value, images_seen, train_seconds = -math.inf, 0, 0.0
    for epoch in range(config.epochs):
        lr = schedule.lr()
        loss, seen, seconds = train_epoch(run, epoch)
        images_seen, train_seconds = images_seen + seen, train_seconds + seconds
        # Eager even when compiled: validation without grad, and its short last batch, would each
        # be one more graph to compile per trial, for a few batches per epoch.
        scores, probs = validate(run.model, run.val_loader, run.pipe)
        metrics = {"epoch": epoch, "train_loss": loss, "lr": lr,
                   "train_images_per_second": seen / seconds if seconds else float("inf"), **scores}  # fmt: skip
        history.append(metrics)
        value = objective_value(metrics, config.objective)
        stop = on_epoch_end is not None and bool(on_epoch_end(epoch, metrics))
        if (not last and value > best_value) or (last and (stop or epoch == config.epochs - 1)):
            best_value, chosen.epoch, chosen.metrics, chosen.probs = value, epoch, metrics, probs
            if checkpoint is not None:
                meta = checkpoint_meta(config, run.data.decoded.class_names, run.norm, epoch, metrics)
                save_checkpoint(checkpoint, run.model, meta)
        schedule.after_epoch(value)
        if stop:
            chosen.stopped, chosen.asked_to_stop = epoch < config.epochs - 1, True
            break
    chosen.images_per_second = images_seen / train_seconds if train_seconds else 0.0
    return chosen


def train(config: TrainConfig, on_epoch_end: EpochCallback | None = None) -> TrainResult:
    """Train one model as configured; ``on_epoch_end(epoch, metrics)`` returning True stops early."""
    run = set_up(config)
    checkpoint_path = Path(config.output_dir) / "best.safetensors" if config.output_dir else None
    fitted = fit(run, on_epoch_end, checkpoint_path)
    return TrainResult(
        best_epoch=fitted.epoch,
        best_metrics=fitted.metrics,
        history=fitted.history,
        train_images_per_second=fitted.images_per_second,
        checkpoint=checkpoint_path,
        device=str(run.device),
        class_names=run.data.decoded.class_names,
        stopped_early=fitted.stopped,
        objective=config.objective,
    )
