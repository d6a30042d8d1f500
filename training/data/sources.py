"""Image sources: the competition's profile folders, a class-per-folder tree, a CSV, the digits demo.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.config import DataConfig
from training.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MASK_STEMS = {f"mask{i}": 0 for i in range(1, 6)} | {"incorrect_mask": 1, "normal": 2}
MASK_NAMES = ("mask", "incorrect", "no mask")
GENDERS = {"male": 0, "female": 1}


@dataclass(frozen=True)
class Dataset:
    """Image files and what is known about each: label, group (person), and the class names."""

    paths: tuple[str, ...]
    labels: np.ndarray  # int64, one per path
    groups: np.ndarray | None  # one per path, or None where images are independent
    class_names: tuple[str, ...]
    source: str  # where it came from, for messages and cache keys
    notes: tuple[str, ...] = ()  # what the listing left out and why, one line each, for the caller to say


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
        raise DataError(f"no images found in {dataset.source}; check data.root")
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


@functools.lru_cache(maxsize=8)
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


def _existing_dir(root: Path | None, what: str) -> Path:
    if root is None or not Path(root).is_dir():
        raise DataError(f"{what} {root} does not exist or is not a folder; set data.root")
    return Path(root)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def image_folder(root: Path | None) -> Dataset:
    """One subfolder per class, named by the class; every image below it belongs to that class."""
    root = _existing_dir(root, "image folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
    if not class_dirs:
        raise DataError(f"image folder {root} has no class subfolders")
    paths: list[str] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(
            str(p) for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and _visible(p) and p.is_file()
        )
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


def age_band(age: int, bounds: tuple[int, int]) -> int:
    """0 below the first bound, 1 below the second, else 2."""
    return 0 if age < bounds[0] else 1 if age < bounds[1] else 2


def competition_class_names(bounds: tuple[int, int]) -> tuple[str, ...]:
    """The 18 readable names, in label order: mask × 6 + gender × 3 + age band."""
    ages = (f"<{bounds[0]}", f"{bounds[0]}-{bounds[1] - 1}", f">={bounds[1]}")
    return tuple(f"{m}/{g}/{a}" for m in MASK_NAMES for g in GENDERS for a in ages)


def _folder_people(images: Path, notes: list[str]) -> list[tuple[Path, str, str, int]]:
    """(folder, id, gender, age) of each ``<id>_<gender>_<race>_<age>`` folder; other folders are
    skipped, each with a line in ``notes``."""
    people = []
    for folder in sorted(p for p in images.iterdir() if p.is_dir() and _visible(p)):
        parts = folder.name.split("_")
        if len(parts) != 4 or parts[1] not in GENDERS or not parts[3].isdigit():
            notes.append(f"skipping {folder}: folder name is not <id>_<gender>_<race>_<age>")
            continue
        people.append((folder, parts[0], parts[1], int(parts[3])))
    return people


def _listed_people(listed: Path, images: Path) -> list[tuple[Path, str, str, int]]:
    """(folder, id, gender, age) of each row of the competition's ``train.csv``, as the row says."""
    with open(listed, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "gender", "age"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(
                f"{listed}: missing column(s) {sorted(missing)}; "
                "the competition's train.csv has id,gender,race,age,path"
            )
        people = []
        first_line: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            path, gender, age = ((row.get(key) or "").strip() for key in ("path", "gender", "age"))
            gender = gender.lower()
            if not path:
                raise DataError(f"{listed}:{line}: empty path; fix or delete the row")
            if path in first_line:  # a corrected row added below the old one: whose labels would count?
                raise DataError(
                    f"{listed}:{line}: {path} is listed again (first at line {first_line[path]}); "
                    "keep one row per person"
                )
            first_line[path] = line
            if gender not in GENDERS or not age.isdigit():
                raise DataError(
                    f"{listed}:{line}: gender {gender!r} and age {age!r}; expected male or female and whole years"
                )
            people.append((images / path, (row.get("id") or "").strip() or path.split("_")[0], gender, int(age)))
    return people


def competition_layout(root: Path | None, age_bounds: tuple[int, int]) -> Dataset:
    """``<root>/images/<id>_<gender>_<race>_<age>/{mask1..5,incorrect_mask,normal}.<ext>``; with a
    ``<root>/train.csv`` (``id,gender,race,age,path``), its rows name the folders and say each
    person's gender and age (a corrected row relabels that person's images)."""
    root = _existing_dir(root, "competition data root")
    images = root / "images" if (root / "images").is_dir() else root
    listed = root / "train.csv"
    notes: list[str] = []
    people = _listed_people(listed, images) if listed.is_file() else _folder_people(images, notes)
    paths: list[str] = []
    labels: list[int] = []
    groups: list[str] = []
    for folder, person, gender, age in people:
        if not folder.is_dir():
            notes.append(f"skipping {folder}: listed in train.csv but not on disk")
            continue
        for file in sorted(folder.iterdir()):
            mask = MASK_STEMS.get(file.stem)
            if mask is None or not _visible(file) or file.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            paths.append(str(file))
            labels.append(mask * 6 + GENDERS[gender] * 3 + age_band(age, age_bounds))
            groups.append(person)
    return Dataset(
        tuple(paths),
        np.asarray(labels, dtype=np.int64),
        np.asarray(groups),
        competition_class_names(age_bounds),
        str(images),
        tuple(notes),
    )


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
