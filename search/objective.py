"""The trial adapter: sample → training config → ``train`` → record → return macro-F1.

Pruning is the epoch callback: it reports macro-F1 at step = epoch and asks the pruner. What a
trial leaves goes into Optuna's own tables (params, user attributes) and artifact store.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import optuna

from search.pictures import TrialPictures
from search.progress import Progress
from search.pruners import first_prunable_step
from search.space import sample
from search.storage import (
    CHECKPOINT_ATTR,
    STORAGE_ERRORS,
    AtomicArtifactStore,
    TrialGate,
    set_user_attrs,
    trial_artifact_record,
    upload,
)
from search.studyfile import Study
from training import ConfigError, NonFiniteLossError, TrainConfig, TrainResult, train
from training.errors import DiskError, SearchServiceError

log = logging.getLogger(__name__)
SCALAR_METRICS = ("macro_f1", "accuracy", "macro_precision", "macro_recall", "roc_auc", "train_loss")


class TrialFailed(SearchServiceError):
    """A trial failed for a reason recorded on it; the study goes on."""


def _json_safe(value: Any) -> Any:
    """NaN and infinity become None: user attributes are JSON the dashboard must parse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def result_attrs(result: TrainResult) -> dict[str, Any]:
    """Every validation metric of the best epoch, plus how the run went: the trial's user attributes."""
    best = result.best_metrics
    attrs: dict[str, Any] = {name: _json_safe(best.get(name)) for name in SCALAR_METRICS}
    attrs |= {
        "per_class_f1": _json_safe(best.get("per_class_f1")),
        "confusion_matrix": best.get("confusion_matrix"),
        "best_epoch": result.best_epoch,
        "best_epoch_lr": best.get("lr"),
        "epochs_run": result.epochs_run,
        "train_images_per_second": round(result.train_images_per_second, 1),
        "device": result.device,
    }
    return attrs


class Objective:
    """Callable for ``study.optimize``; one per worker, reused for every trial it runs."""

    def __init__(
        self,
        spec: Study,
        store: AtomicArtifactStore,
        work_dir: Path,
        gate: TrialGate,
        progress: Progress,
    ) -> None:
        self.spec = spec
        self.store = store
        self.work_dir = work_dir
        self.gate = gate
        self.progress = progress
        self.pictures = TrialPictures(store)
        self.first_prunable_epoch = first_prunable_step(spec.pruner)

    def __call__(self, trial: optuna.Trial) -> float:
        self.gate.release()  # the trial exists now: other workers may start theirs
        params = sample(trial, self.spec.space)
        out_dir = self.work_dir / f"trial-{trial.number}"
        config = self.spec.trial_config(params, out_dir)
        set_user_attrs(
            trial,
            {
                "seed": config.seed,
                "worker": f"{socket.gethostname()}:{os.getpid()}",
                "config": json.dumps(config.model_dump(mode="json"), sort_keys=True),
            },
        )
        self.progress.trial_started(trial.number, params)

        try:
            return self._train(trial, config)
        finally:  # stored or not, the trial's own copy of its checkpoint goes (a failed trial's too)
            shutil.rmtree(out_dir, ignore_errors=True)

    def _train(self, trial: optuna.Trial, config: TrainConfig) -> float:
        """Train the trial's config, reporting each epoch; record how it ended."""

        def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> bool:
            trial.report(metrics["macro_f1"], epoch)
            self.progress.epoch(trial.number, epoch, config.epochs, metrics)
            return epoch >= self.first_prunable_epoch and trial.should_prune()

        failure: dict[str, Any] = {}
        try:
            result = train(config, on_epoch_end)
        except (ConfigError, DiskError) as error:  # the study or the disk is wrong: stop, burn no more trials
            _note_failure(trial, failure_reason=str(error))
            raise
        except NonFiniteLossError as error:
            failure = {"failure_reason": str(error), "failed_epoch": error.epoch}
        except KeyboardInterrupt as interrupt:
            _note_failure(trial, failure_reason="interrupted")
            interrupt.trial = trial.number  # for the command's last line
            raise
        except STORAGE_ERRORS:
            raise  # the database is away: the worker waits for it (see StorageOutage)
        except Exception as error:  # out of GPU memory, among others: the trial FAILs, the worker goes on
            text = str(error).strip()
            failure = {"failure_reason": f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"}
            log.debug("trial %d failed", trial.number, exc_info=True)
        # Here the failed run's frames (its model, optimizer and activations) are gone with the
        # exception, so their memory really returns, to this worker's next trial and to the others.
        _free_device_memory()
        if failure:
            _note_failure(trial, **failure)
            raise TrialFailed(f"trial {trial.number} failed: {failure['failure_reason']}")

        attrs = result_attrs(result)
        if not result.stopped_early and result.checkpoint is not None and result.checkpoint.is_file():
            try:
                attrs[CHECKPOINT_ATTR] = upload(self.store, result.checkpoint, trial_artifact_record(trial))
            except DiskError as error:
                _note_failure(trial, **attrs, failure_reason=str(error))
                raise
        set_user_attrs(trial, attrs)
        self.pictures.submit(trial, result, draw=not result.stopped_early)
        value = float(result.best_metrics["macro_f1"])
        if result.stopped_early:
            raise optuna.TrialPruned(f"macro-F1 {value:.4f} after {result.epochs_run} epochs")
        return value


def _note_failure(trial: optuna.Trial, **attrs: Any) -> None:
    """Record why a trial failed, as far as the storage lets us: the failure itself must not be masked."""
    try:
        set_user_attrs(trial, attrs)
    except STORAGE_ERRORS:
        pass


def _free_device_memory() -> None:
    """After a trial (an out-of-memory one above all), give its GPU memory back to the next."""
    import torch

    if torch.cuda.is_available():  # on the CPU the allocator returns memory by itself
        gc.collect()
        torch.cuda.empty_cache()
