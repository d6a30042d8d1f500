"""A submission: a folder of images predicted by a checkpoint (or an ensemble of them), written as
a CSV, in the competition's own format where its ``info.csv`` is given (``search predict``)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from search.ensemble import MANIFEST, read_manifest
from training import IMAGE_EXTENSIONS, ConfigError, DataError, replacing


def _listed(images: Path, info: Path) -> tuple[list[str], list[dict[str, str]], list[str]]:
    try:
        with open(info, newline="") as handle:
            reader = csv.DictReader(handle)
            if "ImageID" not in (reader.fieldnames or ()):
                raise DataError(f"{info}: no ImageID column; expected the competition's ImageID,ans")
            rows = list(reader)
            fields = list(reader.fieldnames or ())
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not a text file"
        raise DataError(f"cannot read --info {info}: {reason}; give the competition's info.csv") from None
    paths = [str(images / row["ImageID"]) for row in rows]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{len(missing)} image(s) listed in {info} are not in {images}, e.g. {missing[0]}")
    return paths, rows, [f for f in fields if f != "ans"] + ["ans"]


def write_predictions(
    checkpoints: Sequence[Path],
    images: Path,
    out: Path,
    *,
    info: Path | None = None,
    flip_tta: bool = False,
    batch_size: int = 256,
    quiet: bool = False,
    force: bool = False,
) -> int:
    """Predict every image and write the CSV atomically; returns the number of rows. Several
    checkpoints are an ensemble: each predicts at its own input size and normalisation, and their
    class probabilities are averaged."""
    from tqdm import tqdm

    from training import ensemble_metas, predict_files

    if not images.is_dir():
        what = "is a file, not a folder" if images.exists() else "does not exist"
        raise DataError(f"image folder {images} {what}; give --images the folder of the images to predict")
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; pass --force to overwrite it")
    if info is not None:
        paths, rows, fields = _listed(images, info)
    else:
        paths = sorted(
            str(p) for p in images.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        rows, fields = [], []
    if not paths:
        raise DataError(f"no images in {images}")
    checkpoints, weights = ensemble_files(checkpoints)
    ensemble_metas(checkpoints)  # a file that is not a checkpoint: one line, before the progress bar
    # A bar on a terminal; none in a log file (where each redraw would be a line): the closing line says it
    with tqdm(total=len(paths), unit="img", disable=True if quiet else None, desc="predicting") as bar:
        probs, metas = predict_files(
            checkpoints, paths, batch_size, flip_tta=flip_tta, progress=bar.update, weights=weights
        )
    labels = probs.argmax(axis=1)
    names = metas[0]["class_names"]
    with replacing(out, "predictions") as temporary, open(temporary, "w", newline="") as file:
        writer = csv.writer(file)
        if info is not None:  # the competition's format: its own rows, ans filled in
            writer.writerow(fields)
            for row, label in zip(rows, labels):
                writer.writerow([*(row[f] for f in fields[:-1]), int(label)])
        else:
            writer.writerow(["path", "label", "class_name", *(f"prob_{n}" for n in names)])
            for path, label, p in zip(paths, labels, probs):
                writer.writerow([os.path.relpath(path, images), int(label), names[label], *(f"{v:.6f}" for v in p)])
    return len(paths)


def ensemble_files(checkpoints: Sequence[Path]) -> tuple[list[Path], list[float] | None]:
    """The checkpoint files to predict with and their weights: a folder ``search ensemble`` wrote
    is its fold models by its manifest's weights; a folder ``search export --folds`` wrote, its
    checkpoints alike; files are averaged alike (no weights)."""
    folders = [Path(c) for c in checkpoints if Path(c).is_dir()]
    if not folders:
        return list(checkpoints), None
    if len(checkpoints) > 1:
        raise ConfigError(f"--checkpoint {folders[0]} is a folder of checkpoints: give it alone, or give files")
    if (folders[0] / MANIFEST).exists():
        return read_manifest(folders[0])
    files = sorted(folders[0].glob("*.safetensors"))
    if not files:
        raise ConfigError(f"--checkpoint {folders[0]} holds no .safetensors file; give search export's or search "
                          "ensemble's folder, or checkpoint files")  # fmt: skip
    return files, None
