"""The files a study stored (checkpoints, pictures), found and deleted with it: Optuna's own
``delete-study`` leaves them in the artifact folder under names that do not say whose they are."""

from __future__ import annotations

import contextlib
import json

import optuna
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import FrozenTrial, TrialState

from search.record import TrialRecord
from search.store import AtomicArtifactStore, stale_trial_numbers, study_id
from search.store.artifacts import DASHBOARD_ARTIFACTS, remove
from training import ConfigError, SearchServiceError


def study_artifacts(storage: optuna.storages.BaseStorage, study: optuna.Study, trials: list[FrozenTrial]) -> set[str]:
    """The ids of everything the study stored: checkpoints (recorded on their trials) and the
    pictures of the trials' notes (recorded on the study, where optuna-dashboard looks)."""
    ids = {artifact_id for t in trials for artifact_id in TrialRecord.of(t).stored_files()}
    ids |= {meta.artifact_id for t in trials for meta in get_all_artifact_meta(t, storage=storage)}
    ids |= {meta.artifact_id for meta in get_all_artifact_meta(study)}
    for key, value in storage.get_study_system_attrs(study_id(study, storage)).items():
        if key.startswith(DASHBOARD_ARTIFACTS):
            with contextlib.suppress(ValueError, TypeError, KeyError):
                ids.add(json.loads(value)["artifact_id"])
    return ids


def delete_study(storage: optuna.storages.BaseStorage, study: optuna.Study, store: AtomicArtifactStore, *,
                 yes: bool) -> str:  # fmt: skip
    """Delete the study, then its stored files (a crash between leaves files nobody points to,
    never trials pointing to missing files); returns what was deleted. Refused while a worker is
    still running one of its trials, and without ``yes``, which is said with what would go."""
    trials, stale = study.get_trials(deepcopy=False), stale_trial_numbers(storage, study.study_name)
    running = [t.number for t in trials if t.state == TrialState.RUNNING and t.number not in stale]
    if running:
        raise SearchServiceError(
            f"study '{study.study_name}' has running trials ({', '.join(map(str, running))}); stop its workers first"
        )
    ids = study_artifacts(storage, study, trials)
    files = [store.base_path / i for i in ids if (store.base_path / i).is_file()]
    size = sum(f.stat().st_size for f in files) / 1e6
    what = f"study '{study.study_name}' ({len(trials)} trials) and its {len(files)} stored "
    what += f"files ({size:.1f} MB in {store.base_path})"
    if not yes:
        raise ConfigError(f"this deletes {what}; pass --yes to delete them")
    optuna.delete_study(study_name=study.study_name, storage=storage)
    for artifact_id in ids:
        remove(store, artifact_id)
    return f"deleted {what}"
