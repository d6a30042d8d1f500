"""What a trial leaves in its study: one typed record, written and read here only; and, from
``search.ranking``, the one ranking of a study's complete trials that every command uses.

Each field of ``TrialRecord`` is the trial user attribute of the same name, as the dashboard and
Optuna's own CLI show them. A field an earlier version did not write reads as None (a study made by
0.1 has no balanced_accuracy, weighted_f1 or worst_class_f1: the fields stay, as every 0.x study's).
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import timezone
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.store import STORAGE_ERRORS, StaleTrial, set_user_attrs
from training import OBJECTIVES

if TYPE_CHECKING:  # torch and timm: not for the commands that only read the study
    from training import TrainConfig, TrainResult

SCALAR_METRICS = (*OBJECTIVES, "macro_precision", "macro_recall", "train_loss")
NO_REASON = "no reason recorded (its worker was killed or lost, or the database went away)"


@dataclass(frozen=True)
class TrialRecord:
    """A trial's user attributes: how it was set up, the metrics of its best epoch, how it ran, its
    checkpoint in the artifact store, and why it failed if it did."""

    seed: int | None = None
    worker: str | None = None  # host:pid of the worker that ran it
    config: str | None = None  # the TrainConfig it trained, as JSON
    macro_f1: float | None = None
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    weighted_f1: float | None = None
    worst_class_f1: float | None = None
    macro_precision: float | None = None
    macro_recall: float | None = None
    roc_auc: float | None = None
    train_loss: float | None = None
    per_class_f1: list[float | None] | None = None
    confusion_matrix: list[list[int]] | None = None
    best_epoch: int | None = None  # counted from 0, as every epoch the project shows (timm's and Optuna's steps)
    best_epoch_lr: float | None = None
    epochs_run: int | None = None
    epoch_train_loss: list[float | None] | None = None  # each epoch's mean training loss, from epoch 0
    train_images_per_second: float | None = None
    device: str | None = None
    checkpoint_artifact: str | None = None  # the artifact id of its best epoch's checkpoint
    confirms: int | None = None  # a confirmation run: the trial whose configuration it trained again
    # cross-validated (data.folds): each fold's objective, its fold models' and its pooled
    # out-of-fold class probabilities' artifact ids
    fold_values: list[float | None] | None = None
    fold_checkpoints: list[str] | None = None
    out_of_fold_artifact: str | None = None
    failure_reason: str | None = None
    failed_epoch: int | None = None

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        """The record of a trial, from its user attributes (others, of other tools, are left out)."""
        return cls(**{key: value for key, value in trial.user_attrs.items() if key in _NAMES})

    def collapse(self) -> tuple[int, float] | None:
        """(class, share) where the best epoch's model predicted one class for almost every
        validation image (``COLLAPSED``, and more than that class's own share): it learned nothing."""
        return collapsed(self.confusion_matrix)

    def stored_files(self) -> list[str]:
        """The artifact ids of what it stored for hand-over: its checkpoint, its fold models and
        its out-of-fold probabilities (its pictures are its note's, kept with the study)."""
        ids = [self.checkpoint_artifact, *(self.fold_checkpoints or ()), self.out_of_fold_artifact]
        return [i for i in ids if i]

    def trained_epochs(self) -> int | None:
        """How many epochs its config trains (over every fold, cross-validated), or None where it
        recorded none."""
        if not self.config:
            return None
        config = json.loads(self.config)
        return config["epochs"] * config.get("data", {}).get("folds", 1)

    def fold_sd(self) -> float | None:
        """Cross-validated: the standard deviation of its folds' objective; None otherwise."""
        values = [v for v in self.fold_values or () if v is not None]
        return statistics.stdev(values) if len(values) > 1 else None

    def spread(self) -> str | None:
        """Cross-validated: its folds' objective as 'folds 0.612-0.705, sd 0.041'; None otherwise."""
        values = [v for v in self.fold_values or () if v is not None]
        sd = self.fold_sd()
        return None if sd is None else f"folds {min(values):.3f}-{max(values):.3f}, sd {sd:.3f}"


COLLAPSED = 0.9  # a model that predicts one class for this share of the images or more


def collapsed(confusion: Sequence[Sequence[int]] | None) -> tuple[int, float] | None:
    """(class, share of the images) where a confusion matrix (rows true, columns predicted) puts
    ``COLLAPSED`` of them or more in one predicted class, 5 points above its true share; else None."""
    predicted = [sum(column) for column in zip(*confusion or ())]
    total = sum(predicted)
    if not total:
        return None
    top = max(range(len(predicted)), key=predicted.__getitem__)
    share, true_share = predicted[top] / total, sum(confusion[top]) / total
    return (top, share) if share >= COLLAPSED and share >= true_share + 0.05 else None


def collapse_text(collapse: tuple[int, float], class_names: Sequence[str] | None) -> str:
    """'predicts 'no mask/male/<30' for 97% of the validation images: it learned nothing'."""
    label, share = collapse
    name = class_names[label] if class_names and label < len(class_names) else f"class {label}"
    return f"predicts '{name}' for {share:.0%} of the validation images: it learned nothing"


def write_start(trial: optuna.Trial, config: TrainConfig, *, confirms: int | None = None) -> None:
    """What a trial records when it starts: its seed, its worker and its config; a confirmation
    run, the trial whose configuration it trains again."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    config_json = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    again = _attrs(confirms=confirms) if confirms is not None else {}
    set_user_attrs(trial, _attrs(seed=config.seed, worker=worker, config=config_json) | again)


def write_result(
    trial: optuna.Trial,
    result: TrainResult,
    checkpoint: str | None = None,
    *,
    fold_checkpoints: list[str] | None = None,
    out_of_fold: str | None = None,
) -> None:
    """What a trial records when it trained: ``result_attrs``, and the artifact ids of what a
    cross-validated trial stored (its fold models, its out-of-fold probabilities)."""
    stored = _attrs(fold_checkpoints=fold_checkpoints) if fold_checkpoints else {}
    stored |= _attrs(out_of_fold_artifact=out_of_fold) if out_of_fold else {}
    set_user_attrs(trial, result_attrs(result, checkpoint) | stored)


def write_fold_values(trial: optuna.Trial, values: list[float]) -> None:
    """A cross-validated trial's objective on each fold done so far, as it goes."""
    set_user_attrs(trial, _attrs(fold_values=_json_safe(list(values))))


def result_attrs(result: TrainResult, checkpoint: str | None = None) -> dict[str, Any]:
    """Every validation metric of the best epoch (an undefined one as null), how the run went, and
    the artifact id of its stored checkpoint, if it has one."""
    best = result.best_metrics
    attrs = _attrs(
        **{name: _json_safe(best.get(name)) for name in SCALAR_METRICS},
        per_class_f1=_json_safe(best.get("per_class_f1")),
        confusion_matrix=best.get("confusion_matrix"),
        best_epoch=result.best_epoch,
        best_epoch_lr=best.get("lr"),
        epochs_run=result.epochs_run,
        epoch_train_loss=_json_safe([epoch["train_loss"] for epoch in result.history]),
        train_images_per_second=round(result.train_images_per_second, 1),
        device=result.device,
    )
    folds = _attrs(fold_values=_json_safe(result.fold_values)) if result.fold_values else {}
    return attrs | folds | (_attrs(checkpoint_artifact=checkpoint) if checkpoint else {})


def failure_attrs(reason: str) -> dict[str, Any]:
    """A failure's reason, as the user attribute ``write_failure`` writes."""
    return _attrs(failure_reason=reason)


def write_failure(
    trial: optuna.Trial, reason: str, *, result: TrainResult | None = None, failed_epoch: int | None = None
) -> None:
    """Record why a trial failed (with what its run left, if it trained), as far as the storage lets
    us: the failure itself must not be masked by a database that went away."""
    attrs = (result_attrs(result) if result is not None else {}) | _attrs(failure_reason=reason)
    if failed_epoch is not None:
        attrs |= _attrs(failed_epoch=failed_epoch)
    try:
        set_user_attrs(trial, attrs)
    except (*STORAGE_ERRORS, optuna.exceptions.UpdateFinishedTrialError):  # away, or failed by another worker
        pass


UTC_TIME = "%Y-%m-%d %H:%M:%S"


def stopped_worker(stale: StaleTrial, trial: FrozenTrial) -> dict[str, Any]:
    """The failure reason of a trial whose worker stopped sending heartbeats (it was killed, or lost
    its machine or the database): which worker, and its last heartbeat or the trial's start, UTC."""
    worker = TrialRecord.of(trial).worker
    who = f"worker {worker}" if worker else "its worker"
    if stale.last_heartbeat is not None:
        return _attrs(failure_reason=f"{who} stopped sending heartbeats at {stale.last_heartbeat:{UTC_TIME}} UTC")
    started = trial.datetime_start.astimezone(timezone.utc) if trial.datetime_start else None
    when = f" at {started:{UTC_TIME}} UTC" if started else ""
    return _attrs(failure_reason=f"{who} sent no heartbeat after the trial started{when}")


_NAMES = {f.name for f in fields(TrialRecord)}


def _attrs(**attrs: Any) -> dict[str, Any]:
    """User attributes by ``TrialRecord``'s field names (a name it lacks is a mistake here)."""
    unknown = set(attrs) - _NAMES
    assert not unknown, f"not fields of TrialRecord: {sorted(unknown)}"
    return attrs


def _json_safe(value: Any) -> Any:
    """NaN and infinity become None: user attributes are JSON the dashboard must parse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def shown_as(objective: str) -> str:
    """An objective's name as every output shows it ('macro-F1', 'balanced accuracy')."""
    return OBJECTIVES.get(objective, objective)


def failures_by_reason(trials: Sequence[FrozenTrial]) -> list[tuple[str, list[int]]]:
    """The failed trials' numbers grouped by their reason, the most frequent reason first; a failed
    trial whose params were queued again says where ("; retried as trial 12")."""
    retries = {t.system_attrs["retry_history"][-1]: t for t in trials if t.system_attrs.get("retry_history")}
    by_reason: dict[str, list[int]] = defaultdict(list)
    for t in (t for t in trials if t.state == TrialState.FAIL):
        reason = TrialRecord.of(t).failure_reason or NO_REASON
        if (retry := retries.get(t.number)) is not None:
            done = "queued again" if retry.state == TrialState.WAITING else "retried"
            reason += f"; {done} as trial {retry.number}"
        by_reason[reason].append(t.number)
    return sorted(by_reason.items(), key=lambda item: (-len(item[1]), item[1][0]))
