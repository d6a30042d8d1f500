"""Out-of-fold ensembles of a cross-validated study (``search ensemble``).

Each complete trial of a study with ``data.folds`` keeps its pooled out-of-fold class probabilities:
every image predicted once, by the fold model that did not train on it. Members are picked among
the top trials greedily, with replacement, by the study's objective of the averaged probabilities
(Caruana et al., 2004, "Ensemble selection from libraries of models"): each round adds the trial
that makes the average best, a trial may be added again (its weight grows), and the ensemble kept
is the best one met along the way. What is written is every member's fold models, with the
weights ``search predict`` averages them by (``ensemble.json``).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from search.handover import export_folds
from search.ranking import ranked
from search.record import TrialRecord
from search.store import AtomicArtifactStore, not_in_store, stored
from search.study.recorded import objective
from training import ConfigError, SearchServiceError, replacing

MANIFEST = "ensemble.json"  # in the folder: the members, their fold models and weights
ENSEMBLE_ATTR = "ensemble"  # the study's latest ensemble, its manifest, for the report


@dataclass(frozen=True)
class Ensemble:
    """The members (trial number → how many times picked), and the out-of-fold objective of their
    weighted average beside the best single member's."""

    weights: dict[int, int]
    value: float
    best_single: tuple[int, float]
    path: list[int]  # the trials in the order they were picked, to the ensemble kept

    def share(self, number: int) -> float:
        return self.weights[number] / sum(self.weights.values())


def out_of_fold(store: AtomicArtifactStore, trial: FrozenTrial) -> tuple[np.ndarray, np.ndarray]:
    """A trial's pooled out-of-fold class probabilities and the images' true classes."""
    artifact_id = TrialRecord.of(trial).out_of_fold_artifact
    if not artifact_id:
        raise SearchServiceError(
            f"trial {trial.number} kept no out-of-fold probabilities (is the study cross-validated?)"
        )
    try:
        with store.open_reader(artifact_id) as reader:
            kept = np.load(io.BytesIO(reader.read()))
            return kept["probs"], kept["labels"]
    except (ValueError, IndexError, KeyError, OSError):
        raise SearchServiceError(f"trial {trial.number}'s out-of-fold file is not an npz of probs, labels") from None
    except optuna.artifacts.exceptions.ArtifactNotFound:
        raise SearchServiceError(
            f"trial {trial.number}'s out-of-fold probabilities are {not_in_store(store)}"
        ) from None


def select(candidates: dict[int, np.ndarray], labels: np.ndarray, metric: str, rounds: int) -> Ensemble:
    """Greedy ensemble selection with replacement over ``candidates`` (trial → probabilities), by
    ``metric`` of the averaged probabilities, for ``rounds`` rounds; the best prefix is kept."""
    from training import classification_metrics, objective_value

    def score(probs: np.ndarray) -> float:
        return objective_value(classification_metrics(labels, probs), metric)

    singles = {number: score(probs) for number, probs in candidates.items()}
    picked: list[int] = []
    total = np.zeros_like(next(iter(candidates.values())), dtype=np.float64)
    best_value, kept = -np.inf, 0
    for _ in range(rounds):
        scores = {number: score((total + probs) / (len(picked) + 1)) for number, probs in candidates.items()}
        number = max(scores, key=lambda n: scores[n])  # of equal ones, the better-ranked trial (first)
        picked.append(number)
        total += candidates[number]
        if scores[number] > best_value:
            best_value, kept = scores[number], len(picked)
    top = max(singles, key=lambda n: singles[n])
    return Ensemble(dict(Counter(picked[:kept])), best_value, (top, singles[top]), picked[:kept])


def build_ensemble(study: optuna.Study, store: AtomicArtifactStore, folder: Path, *, top: int, rounds: int,
                   force: bool = False) -> Ensemble:  # fmt: skip
    """Select an ensemble among the ``top`` complete trials and write their fold models and the
    manifest into ``folder``."""
    kept_files = [t for t in ranked(study.get_trials(deepcopy=False)) if _files_kept(store, t)]  # retention's
    leaders = kept_files[:top]
    if not leaders:
        raise SearchServiceError(
            f"study '{study.study_name}' has no complete cross-validated trial with stored fold models; an ensemble "
            "needs a study with data.folds of 2 or more (search status shows its trials), and picks among the "
            "trials checkpoints.keep_top_k keeps"
        )
    folder = Path(folder)
    if (folder / MANIFEST).exists() and not force:
        raise ConfigError(f"{folder} already holds an ensemble; pass --force to overwrite it")
    kept = {t.number: out_of_fold(store, t) for t in leaders}
    labels = next(iter(kept.values()))[1]
    chosen = select({n: probs for n, (probs, _) in kept.items()}, labels, objective(study.user_attrs), rounds)
    members = []
    for number in chosen.weights:
        _, paths = export_folds(study, store, folder, number=number, force=True)
        members.append({"trial": number, "weight": chosen.share(number), "checkpoints": [p.name for p in paths]})
    manifest = {"objective": objective(study.user_attrs), "out_of_fold": chosen.value, "members": members,
                "best_single": {"trial": chosen.best_single[0], "out_of_fold": chosen.best_single[1]}}  # fmt: skip
    with replacing(folder / MANIFEST, "ensemble manifest") as temporary:
        Path(temporary).write_text(json.dumps(manifest, indent=2) + "\n")
    study.set_user_attr(ENSEMBLE_ATTR, json.dumps(manifest))
    return chosen


def _files_kept(store: AtomicArtifactStore, trial: FrozenTrial) -> bool:
    """Whether a cross-validated trial's fold models and out-of-fold file are all in the store
    (retention removes those of the trials past ``checkpoints.keep_top_k``)."""
    kept = TrialRecord.of(trial)
    files = [*(kept.fold_checkpoints or ()), kept.out_of_fold_artifact]
    return bool(kept.fold_checkpoints) and all(stored(store, f) for f in files)


def read_manifest(folder: Path) -> tuple[list[Path], list[float]]:
    """The checkpoints of an ensemble folder and each one's weight (a member's weight shared by its
    fold models)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = [(folder / name, m["weight"] / len(m["checkpoints"])) for m in manifest["members"]
                 for name in m["checkpoints"]]  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        raise ConfigError(
            f"{folder / MANIFEST} is not an ensemble's manifest; write the folder with search ensemble"
        ) from None
    return [path for path, _ in files], [weight for _, weight in files]
