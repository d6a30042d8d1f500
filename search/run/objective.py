"""The trial adapter: sample → training config → ``train`` → record → the outcome to tell.

Pruning is the epoch callback: it reports the study's objective at step = epoch and asks the
pruner. What a trial leaves goes into Optuna's own tables (params, user attributes) and artifact
store.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import optuna
from optuna.trial import TrialState

from search import record
from search.run.folds import behind_the_best
from search.run.notes import TrialPictures
from search.run.progress import Progress
from search.store import STORAGE_ERRORS, AtomicArtifactStore, confirmation_of
from search.store.artifacts import upload_to_trial
from search.study.distributions import sample
from search.study.pruners import first_prunable_step
from search.study.schema import StudySpec
from training import (
    ConfigError,
    DiskError,
    NonFiniteLossError,
    TrainConfig,
    free_device_memory,
    replacing,
    train,
    train_folds,
)

if TYPE_CHECKING:
    from training import TrainResult

log = logging.getLogger(__name__)


class Outcome(NamedTuple):
    """How a trial ended, as Optuna is told: COMPLETE with its value, PRUNED, or FAIL."""

    state: TrialState
    value: float | None = None


class Objective:
    """Runs one trial of ``spec`` at a time for a worker, which reuses it for every trial it runs.
    A failed trial is an ``Outcome`` (its reason recorded); what must stop the worker is raised: a
    wrong study or a full disk, an interrupt, a database that went away."""

    def __init__(self, spec: StudySpec, store: AtomicArtifactStore, work_dir: Path, progress: Progress) -> None:
        self.spec = spec
        self.store = store
        self.work_dir = work_dir
        self.progress = progress
        self.pictures = TrialPictures(store)
        self.first_prunable_epoch = first_prunable_step(spec.pruner)
        self.steps_per_fold = spec.epochs_per_fold()

    def __call__(self, trial: optuna.Trial) -> Outcome:
        params = sample(trial, self.spec.space)
        out_dir = self.work_dir / f"trial-{trial.number}"
        config = self.spec.trial_config(params, out_dir)
        confirming = confirmation_of(trial)  # a confirmation run: its configuration's own seed
        if confirming is not None:
            config = config.model_copy(update={"seed": confirming["seed"]})
        record.write_start(trial, config, confirms=confirming and confirming["trial"])
        self.progress.trial_started(trial.number, params, confirming)
        try:
            return self._train(trial, config, confirming)
        finally:  # stored or not, the trial's own copy of its checkpoint goes (a failed trial's too)
            shutil.rmtree(out_dir, ignore_errors=True)

    def _train(self, trial: optuna.Trial, config: TrainConfig, confirming: dict[str, int] | None) -> Outcome:
        """Train the trial's config, reporting each epoch; record how it ended. A confirmation run
        (``confirming``) is never pruned."""
        searching = confirming is None

        def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> bool:
            fold = metrics.get("fold")  # cross-validated: fold k's epochs are steps k × steps_per_fold + epoch
            trial.report(metrics[config.objective], epoch if fold is None else fold * self.steps_per_fold + epoch)
            self.progress.epoch(trial.number, epoch, config.epochs, metrics, config.objective)
            return searching and epoch >= self.first_prunable_epoch and trial.should_prune()

        def on_fold_end(fold: int, values: list[float]) -> bool:
            record.write_fold_values(trial, values)
            return searching and behind_the_best(trial, values, self.spec.fold_pruning)

        failure: tuple[str, int | None] | None = None
        try:
            if config.data.folds > 1:
                result = train_folds(config, on_epoch_end, on_fold_end)
            else:
                result = train(config, on_epoch_end)
        except (ConfigError, DiskError) as error:  # the study or the disk is wrong: stop, burn no more trials
            record.write_failure(trial, str(error))
            raise
        except NonFiniteLossError as error:
            failure = (str(error), error.epoch)
        except STORAGE_ERRORS:
            raise  # the database is away: the worker waits for it (see StorageOutage)
        except Exception as error:  # out of GPU memory, among others: the trial FAILs, the worker goes on
            text = str(error).strip()
            failure = (f"{type(error).__name__}: {text.splitlines()[0] if text else ''}", None)
            log.debug("trial %d failed", trial.number, exc_info=True)
        # Here the failed run's frames (its model, optimizer and activations) are gone with the
        # exception, so their memory really returns, to this worker's next trial and to the others.
        free_device_memory()
        if failure is not None:
            record.write_failure(trial, failure[0], failed_epoch=failure[1])
            return Outcome(TrialState.FAIL)
        try:
            stored = {} if result.stopped_early else self._store(trial, result, config)
        except DiskError as error:
            record.write_failure(trial, str(error), result=result)
            raise
        record.write_result(trial, result, **stored)
        self.pictures.submit(trial, result, draw=not result.stopped_early, confirming=confirming)
        if result.stopped_early:
            return Outcome(TrialState.PRUNED)
        return Outcome(TrialState.COMPLETE, result.best_value)

    def _store(self, trial: optuna.Trial, result: TrainResult, config: TrainConfig) -> dict[str, Any]:
        """What a complete trial hands over, into the artifact store: its best epoch's checkpoint, or
        cross-validated, its fold models and its pooled out-of-fold class probabilities."""
        if result.out_of_fold is not None:
            probs = Path(config.output_dir) / "out_of_fold.npz"
            with replacing(probs, "out-of-fold probabilities") as temporary, open(temporary, "wb") as file:
                np.savez(file, probs=result.out_of_fold, labels=result.labels, fold=result.validated_in)
            folds = [upload_to_trial(self.store, path, trial) for path in result.fold_checkpoints]
            return {"fold_checkpoints": folds, "out_of_fold": upload_to_trial(self.store, probs, trial)}
        if result.checkpoint is not None and result.checkpoint.is_file():
            return {"checkpoint": upload_to_trial(self.store, result.checkpoint, trial)}
        return {}
