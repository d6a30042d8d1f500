"""What a study hands over: trials as self-describing checkpoints that load into a plain timm model,
a trial's stored checkpoint, the best K for an ensemble, or a trial's params trained again (on all
the data, for the final submission). Everything is checked before the first file is written."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from enum import Enum
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.console import say_data_notes
from search.ranking import chosen, configuration_of, ranked
from search.record import TrialRecord
from search.store import AtomicArtifactStore, not_in_store, stored
from search.study.inputs import check_inputs, data_place, trained_inputs
from training import ConfigError, SearchServiceError, TrainConfig, make_folder, replacing


class Export(Enum):
    """What an export writes."""

    STORED = "stored"  # the checkpoint the trial stored
    RETRAIN = "retrain"  # that, or where none is stored, the trial's recipe trained again
    ALL_DATA = "all data"  # the trial's params trained again on all the data, up to its best epoch


def export_trial(study: optuna.Study, store: AtomicArtifactStore, out: Path, *, number: int | None = None,
                 mode: Export = Export.STORED, force: bool = False) -> FrozenTrial:  # fmt: skip
    """Write trial ``number``'s checkpoint (the best trial's by default) to ``out``, atomically; where
    retention removed it before confirmation runs lifted its configuration, the best of their stored
    ones (a confirmation run trains the same configuration with another seed)."""
    trial = chosen(study, number)
    if mode is Export.ALL_DATA:
        _complete(trial)
    elif TrialRecord.of(trial).fold_values is not None:
        raise SearchServiceError(f"trial {trial.number} {_CROSS_VALIDATED}")
    out = _free(out, force=force)
    validation_values = _values_to_best_epoch(trial) if mode is Export.ALL_DATA else []
    with replacing(out, "checkpoint") as temporary:
        if mode is Export.ALL_DATA:
            _train_on_all_data(study, trial, validation_values, temporary)
        elif not any(stored(store, TrialRecord.of(run).checkpoint_artifact, copy_to=temporary)
                     for run in _trial_then_its_runs(study, trial)):  # fmt: skip
            if mode is not Export.RETRAIN:
                raise SearchServiceError(
                    f"trial {trial.number} of '{study.study_name}' has no stored checkpoint "
                    f"({_why_missing(trial, store)}); pass --retrain to train its params again"
                )
            _retrain(study, trial, temporary)
    return trial


def export_top(study: optuna.Study, store: AtomicArtifactStore, folder: Path, top: int, *,
               mode: Export = Export.STORED, force: bool = False) -> list[tuple[FrozenTrial, Path]]:  # fmt: skip
    """The ``top`` best complete trials as ``folder/trial-<number>.safetensors``, for an ensemble
    (``search predict`` with all of them)."""
    leaders = ranked(study.get_trials(deepcopy=False))[:top]
    if not leaders:
        chosen(study, None)  # says there is none yet
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; --out with --top is the folder to write the checkpoints in")
    outs = [_free(folder / f"trial-{t.number}.safetensors", force=force) for t in leaders]
    if mode is Export.ALL_DATA:
        for trial in leaders:
            _values_to_best_epoch(trial)  # every trial's epochs checked before the first one trains
    stored_only = mode is Export.STORED
    missing = [t for t in leaders if stored_only and not stored(store, TrialRecord.of(t).checkpoint_artifact)]
    if missing:
        which = f"trial {missing[0].number} has" if len(missing) == 1 else f"trials {_numbers(missing)} have"
        raise SearchServiceError(
            f"{which} no stored checkpoint ({_why_missing(missing[0], store)}); pass --retrain to train "
            "their params again, or ask for fewer with --top"
        )
    return [
        (export_trial(study, store, out, number=t.number, mode=mode, force=force), out) for t, out in zip(leaders, outs)
    ]


_CROSS_VALIDATED = (
    "is cross-validated: its models are its folds'; pass --folds to write them (search predict averages "
    "them), or --all-data for one model trained on every image"
)


def export_folds(study: optuna.Study, store: AtomicArtifactStore, folder: Path, *, number: int | None = None,
                 force: bool = False) -> tuple[FrozenTrial, list[Path]]:  # fmt: skip
    """A cross-validated trial's fold models (the best trial's by default) as
    ``folder/trial-<number>-fold-<k>.safetensors``: an ensemble for ``search predict``."""
    trial = chosen(study, number)
    ids = TrialRecord.of(trial).fold_checkpoints or []
    if not ids:
        why = "is not cross-validated (data.folds)" if TrialRecord.of(trial).fold_values is None else (
            f"stored no fold models ({_why_missing(trial, store)})")  # fmt: skip
        raise SearchServiceError(f"trial {trial.number} {why}; export it without --folds")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; --out with --folds is the folder to write the fold models in")
    outs = [_free(folder / f"trial-{trial.number}-fold-{k}.safetensors", force=force) for k in range(len(ids))]
    missing = [k for k, artifact_id in enumerate(ids) if not stored(store, artifact_id)]
    if missing:
        raise SearchServiceError(f"trial {trial.number}'s fold {missing[0]} model is {not_in_store(store)}")
    make_folder(folder, "the folder for the fold models", "give another --out")
    for artifact_id, out in zip(ids, outs):
        with replacing(out, "checkpoint") as temporary:
            stored(store, artifact_id, copy_to=temporary)
    return trial, outs


def _free(out: Path, *, force: bool) -> Path:
    """``out``, unless a file is there already and ``force`` does not allow replacing it."""
    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; pass --force to overwrite it")
    return out


def _numbers(trials: list[FrozenTrial]) -> str:
    return ", ".join(str(t.number) for t in trials)


def _trial_then_its_runs(study: optuna.Study, trial: FrozenTrial) -> Iterator[FrozenTrial]:
    """``trial``, then its configuration's confirmation runs, the best first: the study is read for
    them only where the trial's own checkpoint was not there."""
    yield trial
    if found := configuration_of(study.get_trials(deepcopy=False), trial):
        yield from sorted(found.runs[1:], key=lambda t: t.value, reverse=True)


def _why_missing(trial: FrozenTrial, store: AtomicArtifactStore) -> str:
    if trial.state != TrialState.COMPLETE:
        return f"it is {trial.state.name}"
    if TrialRecord.of(trial).fold_values is not None:
        return f"it {_CROSS_VALIDATED}"
    if not TrialRecord.of(trial).checkpoint_artifact:
        return "none was written"
    return f"it is {not_in_store(store)}"


def _complete(trial: FrozenTrial) -> None:
    """``--all-data`` trains a complete trial's recipe: refused for another."""
    if trial.state != TrialState.COMPLETE:
        raise SearchServiceError(
            f"trial {trial.number} is {trial.state.name}: --all-data trains a complete trial's recipe up to its "
            "best epoch; give a complete one (search status lists them)"
        )


def _values_to_best_epoch(trial: FrozenTrial) -> list[float]:
    """The trial's objective at each epoch up to its best (its reports), which ``--all-data`` trains
    to; cross-validated, each epoch's mean over the folds, to the last epoch (the one each fold kept)."""
    kept = TrialRecord.of(trial)
    if kept.fold_values is not None:
        return fold_means(trial)
    epochs = kept.best_epoch + 1 if kept.best_epoch is not None else 0
    validation_values = [trial.intermediate_values.get(epoch) for epoch in range(epochs)]
    if not validation_values or None in validation_values:
        raise SearchServiceError(
            f"trial {trial.number} did not record its best epoch and its value at every epoch to it"
        )
    return validation_values


def fold_means(trial: FrozenTrial) -> list[float]:
    """A complete cross-validated trial's objective at each epoch, averaged over its folds: its
    reports, in step order, are each fold's epochs in turn."""
    values = [trial.intermediate_values[step] for step in sorted(trial.intermediate_values)]
    folds = len(TrialRecord.of(trial).fold_values or ())
    if not folds or len(values) % folds:
        raise SearchServiceError(f"trial {trial.number} did not record every epoch of each of its folds")
    epochs = len(values) // folds
    return [sum(values[k * epochs + e] for k in range(folds)) / folds for e in range(epochs)]


def _train_on_all_data(study: optuna.Study, trial: FrozenTrial, validation_values: list[float], target: Path) -> None:
    """The trial's params trained again on all the data (its validation split too) for the epochs
    of ``validation_values``: up to the one where the trial peaked."""
    from training import train_on_all_data  # torch and timm: seconds to import, for this path only

    train_on_all_data(_trainable_config(study, trial, None), validation_values, target)


def _retrain(study: optuna.Study, trial: FrozenTrial, target: Path) -> None:
    from training import train  # torch and timm: seconds to import, for this path only

    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        result = train(_trainable_config(study, trial, Path(work)))
        shutil.copyfile(result.checkpoint, target)


def _trainable_config(study: optuna.Study, trial: FrozenTrial, output_dir: Path | None) -> TrainConfig:
    """The trial's recorded config, refused where the images or the weights file behind its paths
    are no longer those the study was trained on (the check a run makes: ``check_inputs``)."""
    from training import prepare_data  # memoised: the training that follows reuses the decode

    config_json = TrialRecord.of(trial).config
    if config_json is None:
        raise SearchServiceError(f"trial {trial.number} has no recorded config to train again from")
    config = TrainConfig.model_validate_json(config_json).model_copy(update={"output_dir": output_dir})
    prepared = prepare_data(config.data, config.seed)
    say_data_notes(prepared.notes)
    check_inputs(study, trained_inputs(prepared, config.data, config.model), data_place(config.data), record=False)
    return config
