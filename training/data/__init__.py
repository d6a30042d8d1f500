"""Data: sources (competition layout, image folder, CSV, built-in demo), decode cache, split, batches."""

from __future__ import annotations

from training.data.cache import DecodedImages, decode_images
from training.data.loader import BatchLoader
from training.data.sources import Dataset, load_source
from training.data.split import split_train_val

__all__ = [
    "BatchLoader",
    "Dataset",
    "DecodedImages",
    "decode_images",
    "load_source",
    "split_train_val",
]
