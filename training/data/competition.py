"""The competition's layout: ``<root>/images/<id>_<gender>_<race>_<age>/`` holding each person's
``mask1``-``mask5``, ``incorrect_mask`` and ``normal`` images, and ``<root>/train.csv``
(``id,gender,race,age,path``), whose rows name the folders and say each person's gender and age
(a corrected row relabels that person's images). The 18 classes: mask state × gender × age band.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from training.data.listing import Dataset, existing_dir, is_image, visible
from training.errors import DataError

LAYOUT = "<root>/images/<id>_<gender>_<race>_<age>/mask1.jpg ... normal.jpg, with <root>/train.csv"
MASK_STEMS = {f"mask{i}": 0 for i in range(1, 6)} | {"incorrect_mask": 1, "normal": 2}
MASK_NAMES = ("mask", "incorrect", "no mask")
GENDERS = {"male": 0, "female": 1}
PARTS = ("mask", "gender", "age")  # what each of the 18 labels is made of, in ``part_labels``' order

Person = tuple[Path, str, str, int]  # folder, id, gender, age


def age_band(age: int, bounds: tuple[int, int]) -> int:
    """0 below the first bound, 1 below the second, else 2."""
    return 0 if age < bounds[0] else 1 if age < bounds[1] else 2


def competition_class_names(bounds: tuple[int, int]) -> tuple[str, ...]:
    """The 18 readable names, in label order: mask × 6 + gender × 3 + age band."""
    ages = (f"<{bounds[0]}", f"{bounds[0]}-{bounds[1] - 1}", f">={bounds[1]}")
    return tuple(f"{m}/{g}/{a}" for m in MASK_NAMES for g in GENDERS for a in ages)


def part_labels(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Each of the 18-class ``labels`` split into its parts: mask state, gender and age band (0-2, 0-1, 0-2)."""
    return {"mask": labels // 6, "gender": labels // 3 % 2, "age": labels % 3}


def _person(name: str) -> tuple[str, str, int] | None:
    """(id, gender, age) of a ``<id>_<gender>_<race>_<age>`` folder name, or None."""
    parts = name.split("_")
    if len(parts) != 4 or parts[1] not in GENDERS or not parts[3].isdigit():
        return None
    return parts[0], parts[1], int(parts[3])


def images_folder(root: Path) -> Path:
    """The folder of people's folders: ``root/images``, or ``root`` itself when it holds them and
    nothing above it has a ``train.csv``. A root one level off is refused, naming the one to give:
    the ``images`` folder beside a ``train.csv`` (whose corrected rows would be lost), or one person's folder."""
    root = root.resolve()
    if (root / "images").is_dir():
        return root / "images"
    if _person(root.name) is not None:
        above = root.parent.parent if root.parent.name == "images" else root.parent
        raise DataError(
            f"data.root {root} is one person's folder; give the competition's root, {above}, which holds images/ "
            f"(the layout is {LAYOUT})"
        )
    if not (root / "train.csv").is_file() and (root.parent / "train.csv").is_file():
        raise DataError(
            f"data.root {root} is the images folder, and the train.csv beside it (its corrected labels) would be "
            f"ignored; give its parent, {root.parent} (the layout is {LAYOUT})"
        )
    return root


def _folder_people(images: Path, left_out: list[tuple[str, str]]) -> list[Person]:
    """Each ``<id>_<gender>_<race>_<age>`` folder as its name says; others are left out."""
    people = []
    for folder in sorted(p for p in images.iterdir() if p.is_dir() and visible(p)):
        found = _person(folder.name)
        if found is None:
            left_out.append(("unparsed folder", str(folder)))
            continue
        people.append((folder, *found))
    return people


def _listed_people(listed: Path, images: Path, left_out: list[tuple[str, str]]) -> list[Person]:
    """Each row of the competition's ``train.csv``, as the row says; the folders on disk it does not
    list are left out."""
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
    named = {folder.name for folder, *_ in people}
    on_disk = sorted(p for p in images.iterdir() if p.is_dir() and visible(p) and p.name not in named)
    left_out += [("unlisted folder", str(folder)) for folder in on_disk]
    return people


def competition_layout(root: Path | None, age_bounds: tuple[int, int]) -> Dataset:
    """The images of the competition's layout (``LAYOUT``), labelled and grouped by person; what is
    not of the layout is left out, each item with its kind (``Dataset.left_out``)."""
    root = existing_dir(root, "competition data root")
    images = images_folder(root)
    listed = root / "train.csv"
    left_out: list[tuple[str, str]] = []
    people = _listed_people(listed, images, left_out) if listed.is_file() else _folder_people(images, left_out)
    paths: list[str] = []
    labels: list[int] = []
    groups: list[str] = []
    for folder, person, gender, age in people:
        if not folder.is_dir():
            left_out.append(("missing folder", str(folder)))
            continue
        for file in sorted(p for p in folder.iterdir() if is_image(p)):
            mask = MASK_STEMS.get(file.stem)
            if mask is None:
                left_out.append(("unnamed image", str(file)))
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
        tuple(left_out),
    )
