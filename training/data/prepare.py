"""A run's data as its trials use it: listed, decoded once (cached), split by the seed, with its
facts (``DataFacts``: what it holds and what was left out on the way) for the caller to say."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from training.config import DataConfig
from training.data.cache import DecodedImages, decode_images
from training.data.facts import DataFacts, decoded_left_out
from training.data.listing import Dataset
from training.data.sources import cache_folder, load_source
from training.data.split import fold_splits, split_train_val, unvalidated_classes
from training.per_process import Memo


@dataclass(frozen=True)
class PreparedData:
    """Decoded images and the split, shared by every trial on the same data in this process. With
    ``data.folds`` of K >= 2, ``folds`` holds the K (train, validation) pairs and the split is the
    first fold's; ``fold(k)`` is the data split as fold k (the same decoded images)."""

    decoded: DecodedImages
    train_idx: np.ndarray
    val_idx: np.ndarray
    facts: DataFacts
    folds: tuple[tuple[np.ndarray, np.ndarray], ...] = ()

    def fold(self, k: int) -> PreparedData:
        train_idx, val_idx = self.folds[k]
        return replace(self, train_idx=train_idx, val_idx=val_idx)

    @property
    def notes(self) -> list[str]:
        """What to warn of: each item left out, and classes without validation images."""
        # cross-validated, every image is validated once: the pooled predictions have every class
        decoded = self.decoded
        unvalidated = None if self.folds else unvalidated_classes(decoded.labels, self.val_idx, decoded.class_names)
        return [*self.facts.notes(), *([unvalidated] if unvalidated else [])]

    @property
    def num_classes(self) -> int:
        return len(self.decoded.class_names)

    def train_class_counts(self) -> np.ndarray:
        return np.bincount(self.decoded.labels[self.train_idx], minlength=self.num_classes)


_PREPARED: Memo[PreparedData] = Memo(4)  # by the data's settings and the seed


def prepare_data(
    config: DataConfig,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    dataset: Dataset | None = None,
) -> PreparedData:
    """Load the source (unless ``dataset`` is its listing already), decode it once (cached), and
    split it by the seed.

    Memoised per process: the trials of a worker share one listing, one decode and one split
    (the files are taken to stay as they are while a worker runs; a new process looks again).
    """

    def prepare() -> PreparedData:
        listing = dataset or load_source(config)
        decoded = decode_images(listing, config.image_size, cache_folder(config.cache_dir), config.decode_threads,
                                progress, config.keep_damaged)  # fmt: skip
        labels, groups = decoded.labels, decoded.groups
        folds = fold_splits(labels, groups, config.folds, seed) if config.folds > 1 else []
        train_idx, val_idx = folds[0] if folds else split_train_val(labels, groups, config.val_ratio, seed)
        left_out = [*listing.left_out, *decoded_left_out(decoded.skipped, decoded.damaged)]
        facts = DataFacts.of(
            listing.source,
            decoded.class_names,
            decoded.labels,
            decoded.groups,
            (train_idx, val_idx),
            left_out,
            folds=len(folds) or 1,
        )
        return PreparedData(decoded, train_idx, val_idx, facts, tuple(folds))

    return _PREPARED.get((config.model_dump_json(), seed), prepare)
