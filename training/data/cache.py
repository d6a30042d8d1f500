"""Decode every image once into one uint8 array: once per process, and once per machine with a
cache folder.

Later epochs and later trials in the same process read the array. With a cache folder, the first
worker of the machine decodes (the others wait on a lock file and then read its cache), and every
later process maps the persisted array from disk instead of decoding: the machine's workers share
the one copy in the page cache. The key covers each file's path, size and modification time and
the target size, so a changed file is decoded again.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.listing import ends_early
from training.data.sources import Dataset
from training.errors import DataError
from training.pause_points import pause_point
from training.per_process import Memo

log = logging.getLogger(__name__)

_CACHE_VERSION = 3
_IMAGES, _INDEX = "images.npy", "index.npz"


@dataclass(frozen=True)
class DecodedImages:
    """Decoded RGB images (N, H, W, 3) uint8 with their labels; unreadable files are left out."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None
    paths: tuple[str, ...]
    class_names: tuple[str, ...]
    skipped: tuple[str, ...]  # files that could not be decoded
    damaged: tuple[str, ...] = ()  # JPEGs that end early, left out (``data.keep_damaged`` keeps them)


_IN_PROCESS: Memo[DecodedImages] = Memo(2)  # by cache key


def content_digest(decoded: DecodedImages, *, sizes: bool = True) -> str:
    """What the images a run trains and validates on are, wherever they lie: the class names and,
    for each decoded file, its path below the folder the files share, its label and (``sizes``) its
    size. The same files under another root (another machine, a moved folder) give the same digest; a
    file added, removed, relabelled or replaced by one of another size gives another."""
    paths = [os.path.abspath(path) for path in decoded.paths]
    common = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]) if paths else ""
    digest = hashlib.sha256(json.dumps(list(decoded.class_names)).encode())
    for path, label in sorted(zip(paths, decoded.labels.tolist())):
        try:
            size = os.path.getsize(path) if sizes else 0
        except OSError:
            size = -1
        digest.update(f"{os.path.relpath(path, common)}\0{label}\0{size}\n".encode())
    return digest.hexdigest()


def cache_key(dataset: Dataset, image_size: tuple[int, int], keep_damaged: bool = False) -> str:
    """A digest of every file's identity, the target size, and whether damaged images are kept."""
    kept = ":damaged" if keep_damaged else ""
    digest = hashlib.sha1(f"v{_CACHE_VERSION}:{image_size}:{dataset.class_names}{kept}".encode())
    for path, label in zip(dataset.paths, dataset.labels):
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:20]


@functools.cache
def _opencv():
    """OpenCV, told to keep its own warnings to itself: a file it cannot read is reported once, by
    the caller, in words (OpenCV would add a ``[ WARN:0@1.5] global loadsave.cpp ...`` line)."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return cv2


def decode_image(path: str, size: tuple[int, int]) -> np.ndarray | None:
    """One image as RGB uint8 resized to (height, width), or None when it cannot be decoded."""
    cv2 = _opencv()
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
    keep_damaged: bool = False,
) -> DecodedImages:
    """Decode and resize every image of ``dataset``, reusing this process's or the disk's copy.
    The files that cannot be decoded are left out and named in ``skipped``, and JPEGs that end
    early in ``damaged`` (unless ``keep_damaged``), for the caller to say."""
    key = cache_key(dataset, image_size, keep_damaged)
    folder = Path(cache_dir) / "decoded" / key if cache_dir is not None else None
    return _IN_PROCESS.get(key, lambda: _decoded(folder, dataset, image_size, threads, progress, keep_damaged))


def _decoded(
    folder: Path | None,
    dataset: Dataset,
    image_size: tuple[int, int],
    threads: int,
    progress: Callable[[int, int], None] | None,
    keep_damaged: bool = False,
) -> DecodedImages:
    """The images from the machine's cache ``folder``, decoded into it first if it is not there (or
    unreadable); without a cache folder, decoded for this process alone."""
    if folder is None:
        return _decode_all(dataset, image_size, threads, progress, keep_damaged)
    with _one_at_a_time(folder):  # the machine's other workers wait for this one's cache
        decoded = _load(folder) if folder.is_dir() else None
        if decoded is None:
            _remove_leftovers(folder)
            decoded = _decode_all(dataset, image_size, threads, progress, keep_damaged)
            if folder.is_dir():  # there but unreadable
                _set_aside(folder)
            # Mapped from the file like any later worker's: the decoded copy in this process is freed.
            decoded = (_save(folder, decoded) and _load(folder)) or decoded
    return decoded


@contextlib.contextmanager
def _one_at_a_time(folder: Path) -> Iterator[None]:
    """Holds the cache's lock file (``<key>.lock`` beside it): of the workers that start at once,
    one decodes and the others then map its cache instead of decoding too. The lock ends with its
    holder, however that ends. Without a writable cache folder there is no lock (and no cache)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = open(folder.with_name(f"{folder.name}.lock"), "a")  # noqa: SIM115 - held across the yield
    except OSError:
        yield
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another worker of this machine to decode the images (it holds %s)", lock.name)
            fcntl.flock(lock, fcntl.LOCK_EX)
        pause_point("decode")
        yield


def _decode_all(
    dataset: Dataset,
    image_size: tuple[int, int],
    threads: int,
    progress: Callable[[int, int], None] | None,
    keep_damaged: bool = False,
) -> DecodedImages:
    # OpenCV releases the GIL while decoding, so threads scale with cores.
    workers = threads or os.cpu_count() or 1
    images = np.empty((len(dataset.paths), *image_size, 3), dtype=np.uint8)
    ok = np.zeros(len(dataset.paths), dtype=bool)
    damaged = []

    def decode(path: str) -> np.ndarray | str | None:  # None: unreadable; "damaged": decoded, but cut short
        image = decode_image(path, image_size)
        return "damaged" if image is not None and not keep_damaged and ends_early(path) else image

    with ThreadPoolExecutor(workers) as pool:
        for i, image in enumerate(pool.map(decode, dataset.paths, chunksize=64)):
            if isinstance(image, str):
                damaged.append(dataset.paths[i])
            elif image is not None:
                images[i] = image
                ok[i] = True
            if progress is not None and (i + 1) % 256 == 0:
                progress(i + 1, len(dataset.paths))
    if progress is not None:
        progress(len(dataset.paths), len(dataset.paths))
    cut = set(damaged)
    skipped = tuple(p for p, good in zip(dataset.paths, ok) if not good and p not in cut)
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
        damaged=tuple(damaged),
    )


def _save(folder: Path, decoded: DecodedImages) -> bool:
    """Write the images as one raw ``.npy`` (mapped by readers, not copied) and the rest beside it,
    in a temporary folder renamed into place: a reader sees the whole cache or none. Says whether
    the cache is there (ours, or an identical one another worker renamed into place first)."""
    meta = {"paths": decoded.paths, "class_names": decoded.class_names, "skipped": decoded.skipped,
            "damaged": decoded.damaged}  # fmt: skip
    index = {"labels": decoded.labels, "meta": np.asarray(json.dumps(meta))}
    if decoded.groups is not None:
        index["groups"] = decoded.groups.astype(str)
    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        staging.chmod(0o777 & ~_umask())  # as a plain mkdir would make it (mkdtemp's is private), for every worker
        np.save(staging / _IMAGES, decoded.images)
        np.savez(staging / _INDEX, **index)
        os.rename(staging, folder)
        staging = None
    except OSError as error:
        if not folder.is_dir():
            log.warning("could not persist the decode cache to %s: %s", folder, error)
            return False
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return True


def _umask() -> int:
    """This process's umask, read without setting it (``os.umask`` would, for every thread at once)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _load(folder: Path) -> DecodedImages | None:
    """The cache in ``folder``, its images mapped from the file: the page cache holds one copy for
    every worker of the machine, pages are read as batches need them, and a write into the array
    stays in the process (copy-on-write), so nothing changes the file."""
    try:
        with np.load(folder / _INDEX, allow_pickle=False) as index:
            labels = index["labels"]
            groups = index["groups"] if "groups" in index else None
            meta = json.loads(str(index["meta"]))
        images = np.load(folder / _IMAGES, mmap_mode="c")
        if images.dtype != np.uint8 or images.ndim != 4 or not len(images) == len(labels) == len(meta["paths"]):
            raise ValueError(f"images {images.dtype} {images.shape} for {len(labels)} labels")
        return DecodedImages(
            images=images,
            labels=labels,
            groups=groups,
            paths=tuple(meta["paths"]),
            class_names=tuple(meta["class_names"]),
            skipped=tuple(meta["skipped"]),
            damaged=tuple(meta.get("damaged", ())),
        )
    except (OSError, ValueError, KeyError) as error:
        log.warning("ignoring unreadable decode cache %s (%s); decoding again", folder, error)
        return None


def _remove_leftovers(folder: Path) -> None:
    """Removes what a worker that died while writing this cache left (its temporary folder, as
    large as the images): the caller holds the cache's lock, so nobody is writing it now."""
    for left in folder.parent.glob(f".{folder.name}-*"):
        shutil.rmtree(left, ignore_errors=True)
        log.info("removed %s, left by a worker that stopped while writing the decode cache", left)


def _set_aside(folder: Path) -> None:
    """Takes an unreadable cache out of the way (renamed first, so no reader meets it half deleted)."""
    aside = folder.with_name(f".{folder.name}-unreadable-{os.getpid()}")
    try:
        os.rename(folder, aside)
    except OSError:
        return  # another worker did it already
    shutil.rmtree(aside, ignore_errors=True)
