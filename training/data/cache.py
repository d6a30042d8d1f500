"""Decode every image once per process (and optionally once per machine) into one uint8 array.

Later epochs and later trials in the same process read the array; with a cache folder, a new
process loads it from disk instead of decoding again. The key covers each file's path, size and
modification time and the target size, so a changed file is decoded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.sources import Dataset
from training.errors import DataError

log = logging.getLogger(__name__)

_CACHE_VERSION = 1
_IN_PROCESS: dict[str, DecodedImages] = {}


@dataclass(frozen=True)
class DecodedImages:
    """Decoded RGB images (N, H, W, 3) uint8 with their labels; unreadable files are left out."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None
    paths: tuple[str, ...]
    class_names: tuple[str, ...]
    skipped: tuple[str, ...]  # files that could not be decoded


def cache_key(dataset: Dataset, image_size: tuple[int, int]) -> str:
    """A digest of every file's identity and the target size."""
    digest = hashlib.sha1(f"v{_CACHE_VERSION}:{image_size}:{dataset.class_names}".encode())
    for path, label in zip(dataset.paths, dataset.labels):
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:20]


def decode_image(path: str, size: tuple[int, int]) -> np.ndarray | None:
    """One image as RGB uint8 resized to (height, width), or None when it cannot be decoded."""
    import cv2

    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        return None
    height, width = size
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)


def decode_images(
    dataset: Dataset,
    image_size: tuple[int, int],
    cache_dir: Path | None = None,
    threads: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> DecodedImages:
    """Decode and resize every image of ``dataset``, reusing this process's or the disk's copy."""
    key = cache_key(dataset, image_size)
    if key in _IN_PROCESS:
        return _IN_PROCESS[key]
    stored = Path(cache_dir) / "decoded" / f"{key}.npz" if cache_dir is not None else None
    decoded = _load(stored) if stored is not None and stored.is_file() else None
    if decoded is None:
        decoded = _decode_all(dataset, image_size, threads, progress)
        if stored is not None:
            _save(stored, decoded)
    _IN_PROCESS[key] = decoded
    return decoded


def _decode_all(
    dataset: Dataset,
    image_size: tuple[int, int],
    threads: int,
    progress: Callable[[int, int], None] | None,
) -> DecodedImages:
    # OpenCV releases the GIL while decoding, so threads scale with cores.
    workers = threads or os.cpu_count() or 1
    images = np.empty((len(dataset.paths), *image_size, 3), dtype=np.uint8)
    ok = np.zeros(len(dataset.paths), dtype=bool)
    with ThreadPoolExecutor(workers) as pool:
        for i, image in enumerate(pool.map(lambda p: decode_image(p, image_size), dataset.paths, chunksize=64)):
            if image is not None:
                images[i] = image
                ok[i] = True
            if progress is not None and (i + 1) % 256 == 0:
                progress(i + 1, len(dataset.paths))
    if progress is not None:
        progress(len(dataset.paths), len(dataset.paths))
    skipped = tuple(p for p, good in zip(dataset.paths, ok) if not good)
    for path in skipped:
        log.warning("skipping unreadable image %s", path)
    if skipped:
        log.warning("skipped %d unreadable image(s) of %d in %s", len(skipped), len(ok), dataset.source)
    labels = dataset.labels[ok]
    empty = [dataset.class_names[c] for c in range(len(dataset.class_names)) if not np.any(labels == c)]
    if not ok.any():
        raise DataError(f"no readable images in {dataset.source}")
    if empty:
        raise DataError(f"class(es) {empty} have no readable images in {dataset.source}")
    return DecodedImages(
        images=images[ok] if not ok.all() else images,
        labels=labels,
        groups=dataset.groups[ok] if dataset.groups is not None else None,
        paths=tuple(p for p, good in zip(dataset.paths, ok) if good),
        class_names=dataset.class_names,
        skipped=skipped,
    )


def _save(path: Path, decoded: DecodedImages) -> None:
    """Write atomically: a reader sees the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"paths": decoded.paths, "class_names": decoded.class_names, "skipped": decoded.skipped}
    arrays = {"images": decoded.images, "labels": decoded.labels, "meta": np.asarray(json.dumps(meta))}
    if decoded.groups is not None:
        arrays["groups"] = decoded.groups.astype(str)
    handle, temporary = tempfile.mkstemp(prefix=".decoded-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        log.warning("could not persist the decode cache to %s: %s", path, error)


def _load(path: Path) -> DecodedImages | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            return DecodedImages(
                images=stored["images"],
                labels=stored["labels"],
                groups=stored["groups"] if "groups" in stored else None,
                paths=tuple(meta["paths"]),
                class_names=tuple(meta["class_names"]),
                skipped=tuple(meta["skipped"]),
            )
    except (OSError, ValueError, KeyError) as error:
        log.warning("ignoring unreadable decode cache %s (%s); decoding again", path, error)
        return None
