"""A run's data as its trials use it: listed, decoded once (cached), split by the seed, with what
was left out on the way said in ``notes`` for the caller to say."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from training.config import DataConfig
from training.data.cache import DecodedImages, decode_images
from training.data.sources import Dataset, cache_folder, load_source
from training.data.split import split_train_val, unvalidated_classes
from training.memo import Memo


@dataclass(frozen=True)
class PreparedData:
    """Decoded images and the split, shared by every trial on the same data in this process."""

    decoded: DecodedImages
    train_idx: np.ndarray
    val_idx: np.ndarray
    notes: tuple[str, ...] = ()  # what the listing and the decode left out, and a class without validation images

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
        decoded = decode_images(
            listing, config.image_size, cache_folder(config.cache_dir), config.decode_threads, progress
        )
        train_idx, val_idx = split_train_val(decoded.labels, decoded.groups, config.val_ratio, seed)
        unvalidated = unvalidated_classes(decoded.labels, val_idx, decoded.class_names)
        notes = (*listing.notes, *_skipped(decoded, listing), *([unvalidated] if unvalidated else []))
        return PreparedData(decoded, train_idx, val_idx, notes)

    return _PREPARED.get((config.model_dump_json(), seed), prepare)


def _skipped(decoded: DecodedImages, listing: Dataset) -> list[str]:
    """A line for each image the decode left out, and one counting them."""
    lines = [
        f"skipping unreadable image {path}" if os.path.exists(path) else f"skipping {path}: no such file"
        for path in decoded.skipped
    ]
    if decoded.skipped:
        total = len(decoded.skipped) + len(decoded.labels)
        lines.append(f"skipped {len(decoded.skipped)} unreadable image(s) of {total} in {listing.source}")
    return lines
