"""Export a trial's checkpoint as a self-describing file that loads into a plain timm model: the
best trial's, any trial's, the best K for an ensemble, or the trial's params trained again on all
the data for the final submission."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from search.inputs import check_inputs, data_place, trained_inputs
from search.storage import CHECKPOINT_ATTR, AtomicArtifactStore
from training import ConfigError, SearchServiceError, replacing

log = logging.getLogger(__name__)


def choose_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """The given trial, or the best complete one; clear errors when there is none."""
    trials = study.get_trials(deepcopy=False)
    if number is not None:
        for trial in trials:
            if trial.number == number:
                return trial
        last = max((t.number for t in trials), default=None)
        span = f"trials are numbered 0..{last}" if last is not None else "it has no trials"
        raise SearchServiceError(f"study '{study.study_name}' has no trial {number}; {span}")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise SearchServiceError(
            f"study '{study.study_name}' has no complete trial yet; run it on (search status shows it)"
        )
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
    out = _free(out, force)
    with replacing(out, "checkpoint") as temporary:
        if not _stored(store, trial, copy_to=temporary):
            if not retrain:
                raise SearchServiceError(
                    f"trial {trial.number} of '{study.study_name}' has no stored checkpoint "
                    f"({_why_missing(trial, store)}); pass --retrain to train its params again"
                )
            _retrain(study, trial, temporary)
    return trial, out


def export_all_data(study: optuna.Study, out: Path, number: int | None = None, force: bool = False) -> FrozenTrial:
    """The trial's params trained again on all the data (its validation split too) up to the epoch
    where the trial peaked, for the final submission; the best complete trial unless ``number``."""
    from training import train_on_all_data  # torch and timm: seconds to import, for this path only

    trial = choose_trial(study, number)
    if trial.state != TrialState.COMPLETE:
        raise SearchServiceError(
            f"trial {trial.number} is {trial.state.name}: --all-data trains a complete trial's recipe up to its "
            "best epoch; give a complete one (search status lists them)"
        )
    out = _free(out, force)
    validation_f1 = _f1_to_best_epoch(trial)
    config = _trainable_config(study, trial, None)
    with replacing(out, "checkpoint") as temporary:
        train_on_all_data(config, validation_f1, temporary)
    return trial


def _f1_to_best_epoch(trial: FrozenTrial) -> list[float]:
    """The trial's validation macro-F1 of each epoch up to its best, which ``--all-data`` trains to."""
    epochs = trial.user_attrs.get("best_epoch", -1) + 1
    validation_f1 = [trial.intermediate_values.get(epoch) for epoch in range(epochs)]
    if not validation_f1 or None in validation_f1:
        raise SearchServiceError(
            f"trial {trial.number} did not record its best epoch and the macro-F1 of every epoch to it"
        )
    return validation_f1


def _free(out: Path, force: bool) -> Path:
    """``out``, unless a file is there already and ``force`` does not allow replacing it."""
    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; pass --force to overwrite it")
    return out


def export_top(
    study: optuna.Study,
    store: AtomicArtifactStore,
    folder: Path,
    top: int,
    force: bool = False,
    retrain: bool = False,
    all_data: bool = False,
) -> list[tuple[FrozenTrial, Path]]:
    """The ``top`` best complete trials' checkpoints as ``folder/trial-<number>.safetensors``, for an
    ensemble (``search predict`` with all of them); with ``all_data`` each trial's params trained
    again on all the data (``export_all_data``). Everything is checked before the first file is
    written, so a refused export leaves nothing behind."""
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: -t.value)
    if not complete:
        choose_trial(study, None)  # says there is none yet
    chosen = complete[:top]
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; --out with --top is the folder to write the checkpoints in")
    outs = [_free(folder / f"trial-{t.number}.safetensors", force) for t in chosen]
    if all_data:
        for trial in chosen:
            _f1_to_best_epoch(trial)  # every trial's epochs checked before the first one trains
        return [(export_all_data(study, out, t.number, force), out) for t, out in zip(chosen, outs)]
    missing = [t for t in chosen if not _stored(store, t)]
    if missing and not retrain:
        which = f"trial {missing[0].number} has" if len(missing) == 1 else f"trials {_numbers(missing)} have"
        raise SearchServiceError(
            f"{which} no stored checkpoint ({_why_missing(missing[0], store)}); pass --retrain to train "
            "their params again, or ask for fewer with --top"
        )
    return [export_checkpoint(study, store, out, t.number, force, retrain) for t, out in zip(chosen, outs)]


def _numbers(trials: list[FrozenTrial]) -> str:
    return ", ".join(str(t.number) for t in trials)


def _stored(store: AtomicArtifactStore, trial: FrozenTrial, copy_to: Path | None = None) -> bool:
    """Whether the store has the checkpoint the trial recorded; copied to ``copy_to`` when given."""
    artifact_id = trial.user_attrs.get(CHECKPOINT_ATTR)
    if not artifact_id:
        return False
    try:
        with store.open_reader(artifact_id) as reader:
            if copy_to is not None:
                with open(copy_to, "wb") as writer:
                    shutil.copyfileobj(reader, writer)
    except ArtifactNotFound:
        return False
    return True


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


def _retrain(study: optuna.Study, trial: FrozenTrial, target: Path) -> None:
    from training import train  # torch and timm: seconds to import, for this path only

    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        result = train(_trainable_config(study, trial, Path(work)))
        shutil.copyfile(result.checkpoint, target)


def _trainable_config(study: optuna.Study, trial: FrozenTrial, output_dir: Path | None):
    """The trial's recorded config, refused where the images or the weights file behind its paths
    are no longer those the study was trained on (the check a run makes: ``check_inputs``)."""
    from training import prepare_data  # memoised: the training that follows reuses the decode

    config = _recorded_config(trial, output_dir)
    prepared = prepare_data(config.data, config.seed)
    for note in prepared.notes:
        log.warning("%s", note)
    check_inputs(study, trained_inputs(prepared, config.data, config.model), data_place(config.data), record=False)
    return config


def _recorded_config(trial: FrozenTrial, output_dir: Path | None):
    """The training config the trial ran with, writing its checkpoint to ``output_dir``."""
    from training import TrainConfig

    if "config" not in trial.user_attrs:
        raise SearchServiceError(f"trial {trial.number} has no recorded config to train again from")
    return TrainConfig.model_validate_json(trial.user_attrs["config"]).model_copy(update={"output_dir": output_dir})
