"""What a source's listing is: image paths with labels, groups and class names, and what it left
out on the way, each item with the reason a user reads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# Why an item was left out, by kind: the words after its path in a warning and in the study's facts.
LEFT_OUT = {
    "unparsed folder": "folder name is not <id>_<gender>_<race>_<age>",
    "unlisted folder": "not listed in train.csv",
    "missing folder": "listed in train.csv but not on disk",
    "unnamed image": "not named mask1-5, incorrect_mask or normal",
    "unreadable image": "cannot be decoded",
    "damaged image": "its JPEG data ends early; data.keep_damaged: true trains on it",
    "missing image": "no such file",
}


@dataclass(frozen=True)
class Dataset:
    """Image files and what is known about each: label, group (person), and the class names."""

    paths: tuple[str, ...]
    labels: np.ndarray  # int64, one per path
    groups: np.ndarray | None  # one per path, or None where images are independent
    class_names: tuple[str, ...]
    source: str  # where it came from, for messages and cache keys
    left_out: tuple[tuple[str, str], ...] = ()  # (kind of LEFT_OUT, path) of what the listing skipped


def existing_dir(root: Path | None, what: str) -> Path:
    if root is None or not Path(root).is_dir():
        raise DataError(f"{what} {root} does not exist or is not a folder; set data.root")
    return Path(root)


def visible(path: Path) -> bool:
    return not path.name.startswith(".")


def is_image(path: Path) -> bool:
    return visible(path) and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def ends_early(path: str) -> bool:
    """Whether a JPEG file ends before its end-of-image marker (cut short in a copy or an upload):
    OpenCV decodes it with a grey tail, saying so only on stderr. Other formats: False."""
    try:
        with open(path, "rb") as file:
            if file.read(2) != b"\xff\xd8":
                return False
            file.seek(max(0, os.fstat(file.fileno()).st_size - _JPEG_TAIL))
            return b"\xff\xd9" not in file.read()
    except OSError:
        return False


_JPEG_TAIL = 1024  # bytes at a JPEG's end its end-of-image marker is looked for in (some writers pad after it)
