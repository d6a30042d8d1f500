"""Checkpoint retention: only the best configurations keep their runs' files."""

from __future__ import annotations

from optuna.trial import FrozenTrial

from search import record
from search.ranking import configurations
from search.store import AtomicArtifactStore
from search.store.artifacts import remove


class Retention:
    """Removes the files of every configuration below the best ``keep``, after each trial. A file it
    removed (or found gone) is not asked for again: the trials keep naming the ids of removed files,
    and at 10,000 trials asking the store for each one after every trial is thousands of file-system
    calls a trial, on the shared folder."""

    def __init__(self) -> None:
        self.removed: set[str] = set()

    def keep_top(self, trials: list[FrozenTrial], store: AtomicArtifactStore, keep: int) -> None:
        """Only the best ``keep`` configurations keep their runs' checkpoints (fold models and
        out-of-fold probabilities, cross-validated): their trial's and their confirmation runs'."""
        for old in configurations(trials)[keep:]:
            for artifact_id in (i for run in old.runs for i in record.TrialRecord.of(run).stored_files()):
                if artifact_id not in self.removed:
                    remove(store, artifact_id)
                    self.removed.add(artifact_id)


_HERE = Retention()  # this process's


def keep_top_checkpoints(trials: list[FrozenTrial], store: AtomicArtifactStore, keep: int) -> None:
    """``Retention.keep_top``, with what this process removed before."""
    _HERE.keep_top(trials, store, keep)
