"""Image sources: the competition's layout (``competition``), a class-per-folder tree, a CSV, the digits demo.

Each source turns into a ``Dataset``: image paths, integer labels, class names and, where the
source knows people, a group per image so that no person lands on both sides of the split.
"""

from __future__ import annotations

import csv
import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from training.config import DataConfig
from training.data.competition import LAYOUT, competition_layout
from training.data.listing import Dataset, existing_dir, is_image, visible
from training.errors import DataError

log = logging.getLogger(__name__)

# What each source expects to find, for the message when it finds no image.
LAYOUTS = {
    "competition": LAYOUT,
    "folder": "<root>/<class>/<image>.jpg, one folder per class",
    "csv": "a CSV of path,label[,group] rows",
    "demo": "the demo's digits",
}


def load_source(config: DataConfig) -> Dataset:
    """Read the configured source into a ``Dataset``; stops with a ``DataError`` naming the path."""
    loaders = {
        "competition": lambda: competition_layout(config.root, config.age_bounds),
        "folder": lambda: image_folder(config.root),
        "csv": lambda: csv_list(config.root),
        "demo": lambda: image_folder(write_demo(_demo_folder(config.cache_dir), config.demo_imbalance)),
    }
    dataset = loaders[config.source]()
    if len(dataset.paths) == 0:
        raise DataError(
            f"no images found in {dataset.source}, which should hold {LAYOUTS[config.source]}; check data.root"
        )
    present = np.unique(dataset.labels)
    if len(present) < 2:
        raise DataError(
            f"all {len(dataset.paths)} images in {dataset.source} are of one class, "
            f"{dataset.class_names[present[0]]!r}; a classifier needs images of two classes or more"
        )
    return dataset


def default_cache_dir(configured: Path | None) -> Path:
    """The cache folder: the configured one, else ``$SEARCH_CACHE_DIR``, else ``~/.cache/search``."""
    if configured is not None:
        return Path(configured)
    return Path(os.environ.get("SEARCH_CACHE_DIR", Path.home() / ".cache" / "search"))


def cache_folder(configured: Path | None) -> Path | None:
    """The cache folder this process can write: the configured one (``default_cache_dir``), else a
    folder of this user's in the temporary folder (as torch's compiler does), so that a read-only
    home (a container run as another user, whose home is ``/``) still decodes once per machine
    rather than once per worker; said once per process. None when neither can be written."""
    return _writable_or_fallback(default_cache_dir(configured), tempfile.gettempdir())


def forget_cache_folder() -> None:
    """Forget the cache folder chosen (``training/per_process.py``)."""
    _writable_or_fallback.cache_clear()


@functools.lru_cache(maxsize=8)  # per process: its warning is said once (training/per_process.py)
def _writable_or_fallback(folder: Path, temporary: str) -> Path | None:
    error = _cannot_write(folder)
    if error is None:
        return folder
    fallback = Path(temporary) / f"search-cache-{os.getuid()}"
    if _cannot_write(fallback, private=True) is None:
        log.warning(
            "cannot write the cache folder %s (%s); using %s instead. Set SEARCH_CACHE_DIR or data.cache_dir "
            "to a writable folder to keep the decoded images there",
            folder, error, fallback,
        )  # fmt: skip
        return fallback
    log.warning(
        "cannot write the cache folder %s (%s) nor %s: each process decodes the images itself. Set "
        "SEARCH_CACHE_DIR or data.cache_dir to a writable folder",
        folder, error, fallback,
    )  # fmt: skip
    return None


def _cannot_write(folder: Path, *, private: bool = False) -> str | None:
    """Why this process cannot make files in ``folder`` (made if missing), or None. ``private``: a
    folder of this user's only (mode 0700), refused if someone else made it first (a shared
    temporary folder)."""
    try:
        folder.mkdir(mode=0o700 if private else 0o777, parents=True, exist_ok=True)
        if private and (folder.is_symlink() or folder.stat().st_uid != os.getuid()):
            return "made by another user"
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            return None
    except OSError as error:
        return error.strerror or str(error)


def _demo_folder(configured: Path | None) -> Path:
    folder = cache_folder(configured)
    if folder is None:
        raise DataError(
            f"no writable folder for the demo images: {default_cache_dir(configured)} and the temporary folder "
            "cannot be written; set SEARCH_CACHE_DIR to a writable folder"
        )
    return folder


def image_folder(root: Path | None) -> Dataset:
    """One subfolder per class, named by the class; every image below it belongs to that class."""
    root = existing_dir(root, "image folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and visible(p))
    if not class_dirs:
        raise DataError(f"image folder {root} has no class subfolders")
    paths: list[str] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(str(p) for p in class_dir.rglob("*") if is_image(p))
        if not files:
            raise DataError(f"class folder {class_dir} has no images; remove it or add images")
        paths += files
        labels += [label] * len(files)
    names = tuple(p.name for p in class_dirs)
    return Dataset(tuple(paths), np.asarray(labels, dtype=np.int64), None, names, str(root))


def csv_list(csv_path: Path | None) -> Dataset:
    """A CSV with ``path,label`` and an optional ``group`` column; paths relative to the CSV."""
    if csv_path is None or not Path(csv_path).is_file():
        raise DataError(f"labels CSV {csv_path} does not exist; set data.root to the CSV file")
    csv_path = Path(csv_path)
    rows: list[tuple[str, str, str | None]] = []
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "label"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {sorted(missing)}; need path,label[,group]")
        for line, row in enumerate(reader, start=2):
            path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if not path or not label:
                raise DataError(f"{csv_path}:{line}: empty path or label; fix or delete the row")
            rows.append((path, label, row.get("group")))
    labels_text = sorted({label for _, label, _ in rows}, key=_natural_key)
    index = {name: i for i, name in enumerate(labels_text)}
    paths = tuple(str((csv_path.parent / path) if not os.path.isabs(path) else Path(path)) for path, _, _ in rows)
    labels = np.asarray([index[label] for _, label, _ in rows], dtype=np.int64)
    has_groups = rows and all(group not in (None, "") for _, _, group in rows)
    groups = np.asarray([group for _, _, group in rows]) if has_groups else None
    return Dataset(paths, labels, groups, tuple(labels_text), str(csv_path))


def _natural_key(text: str) -> tuple[int, int | str]:
    return (0, int(text)) if text.lstrip("-").isdigit() else (1, text)


def write_demo(cache_dir: Path, imbalance: float, seed: int = 0, size: int = 32) -> Path:
    """Write scikit-learn's digits, made long-tailed, as PNG files once; return the image folder."""
    import cv2
    from sklearn.datasets import load_digits

    target = cache_dir / f"demo-digits-imb{imbalance:g}-seed{seed}"
    if (target / ".complete").is_file():
        return target
    digits = load_digits()
    rng = np.random.default_rng(seed)
    classes = np.unique(digits.target)
    # Class k keeps a geometric share of its images: the largest ``imbalance`` times the smallest.
    rank = rng.permutation(len(classes))
    largest = min(np.bincount(digits.target))
    keep = {c: max(2, round(largest * imbalance ** (-r / (len(classes) - 1)))) for c, r in zip(classes, rank)}
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=cache_dir))
    for c in classes:
        chosen = rng.permutation(np.flatnonzero(digits.target == c))[: keep[c]]
        folder = staging / f"digit_{c}"
        folder.mkdir()
        for i in chosen:
            image = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
            cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC))
    (staging / ".complete").touch()
    try:
        staging.rename(target)
    except OSError:  # another process finished first: its copy is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    return target
