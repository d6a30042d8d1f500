"""Export a trial's checkpoint as a self-describing file that loads into a plain timm model."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from search.storage import CHECKPOINT_ATTR, AtomicArtifactStore
from training.errors import ConfigError, SearchError
from training.files import replacing


def choose_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """The given trial, or the best complete one; clear errors when there is none."""
    trials = study.get_trials(deepcopy=False)
    if number is not None:
        for trial in trials:
            if trial.number == number:
                return trial
        last = max((t.number for t in trials), default=None)
        span = f"trials are numbered 0..{last}" if last is not None else "it has no trials"
        raise SearchError(f"study '{study.study_name}' has no trial {number}; {span}")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise SearchError(f"study '{study.study_name}' has no complete trial yet; run it on (search status shows it)")
    return max(complete, key=lambda t: t.value)


def export_checkpoint(
    study: optuna.Study,
    store: AtomicArtifactStore,
    out: Path,
    number: int | None = None,
    force: bool = False,
    retrain: bool = False,
) -> tuple[FrozenTrial, Path]:
    """Copy (or with ``retrain``, remake) the trial's best checkpoint to ``out``, atomically."""
    trial = choose_trial(study, number)
    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; pass --force to overwrite it")
    with replacing(out, "checkpoint") as temporary:
        if not _download(store, trial, temporary):
            if not retrain:
                raise SearchError(
                    f"trial {trial.number} of '{study.study_name}' has no stored checkpoint "
                    f"({_why_missing(trial, store)}); pass --retrain to train its params again"
                )
            _retrain(trial, temporary)
    return trial, out


def _why_missing(trial: FrozenTrial, store: AtomicArtifactStore) -> str:
    if trial.state != TrialState.COMPLETE:
        return f"it is {trial.state.name}"
    if not trial.user_attrs.get(CHECKPOINT_ATTR):
        return "none was written"
    return f"it is {not_in_store(store)}"


def not_in_store(store: AtomicArtifactStore) -> str:
    """Why a checkpoint a trial recorded is not found."""
    return (
        f"not in {store.base_path}: removed by checkpoint retention, or the run kept its artifacts in "
        "another folder (--artifacts, $SEARCH_ARTIFACTS)"
    )


def _download(store: AtomicArtifactStore, trial: FrozenTrial, target: Path) -> bool:
    artifact_id = trial.user_attrs.get(CHECKPOINT_ATTR)
    if not artifact_id:
        return False
    try:
        with store.open_reader(artifact_id) as reader, open(target, "wb") as writer:
            shutil.copyfileobj(reader, writer)
    except ArtifactNotFound:
        return False
    return True


def _retrain(trial: FrozenTrial, target: Path) -> None:
    from training import TrainConfig, train  # torch and timm: seconds to import, for this path only

    if "config" not in trial.user_attrs:
        raise SearchError(f"trial {trial.number} has no recorded config to retrain from")
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        config = TrainConfig.model_validate_json(trial.user_attrs["config"]).model_copy(
            update={"output_dir": Path(work)}
        )
        result = train(config)
        shutil.copyfile(result.checkpoint, target)
