"""A run's data in the facts a user checks it by: the images used, the classes, the people and how
the split put them, the validation images of each class, and every item left out, with why.

They are the same whether the images were decoded now or read from the cache, and they travel as
JSON (a study records them: ``search status`` and the report show them).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, replace

import numpy as np

from training.data.listing import LEFT_OUT

SHOWN = 10  # paths kept of each kind of left-out item; the rest are counted


@dataclass(frozen=True)
class LeftOut:
    """Items of one kind (a key of ``LEFT_OUT``) that were left out: the first ``SHOWN`` paths and how many."""

    kind: str
    first: tuple[str, ...]
    count: int

    @property
    def why(self) -> str:
        return LEFT_OUT.get(self.kind, self.kind)


@dataclass(frozen=True)
class DataFacts:
    source: str
    class_names: tuple[str, ...]
    train_images: int
    val_images: int
    val_per_class: tuple[int, ...]
    people: int | None = None  # groups (people) in all, on each side: None where images stand alone
    train_people: int | None = None
    val_people: int | None = None
    left_out: tuple[LeftOut, ...] = ()
    folds: int = 1  # K-fold cross-validation: the split above is the first fold's

    @classmethod
    def of(
        cls,
        source: str,
        class_names: tuple[str, ...],
        labels: np.ndarray,
        groups: np.ndarray | None,
        split: tuple[np.ndarray, np.ndarray],
        left_out: list[tuple[str, str]],
        folds: int = 1,
    ) -> DataFacts:
        """The facts of decoded ``labels`` (and ``groups``), split into (train, validation) indices,
        with what the listing and the decode left out as (kind, path) pairs."""
        train, val = split
        counts = Counter(kind for kind, _ in left_out)
        kinds = [LeftOut(kind, tuple(p for k, p in left_out if k == kind)[:SHOWN], n) for kind, n in counts.items()]
        people = {} if groups is None else {
            "people": len(np.unique(groups)),
            "train_people": len(np.unique(groups[train])),
            "val_people": len(np.unique(groups[val])),
        }  # fmt: skip
        return cls(
            source=source,
            class_names=tuple(class_names),
            train_images=len(train),
            val_images=len(val),
            # cross-validated, every image is validated once, in its fold
            val_per_class=tuple(np.bincount(labels if folds > 1 else labels[val], minlength=len(class_names)).tolist()),
            left_out=tuple(kinds),
            folds=folds,
            **people,
        )

    @property
    def images(self) -> int:
        return self.train_images + self.val_images

    def same_as(self, other: DataFacts | None) -> bool:
        """Whether ``other`` holds the same facts, wherever each machine mounts the data: paths are
        compared below their source folder."""
        return other is not None and self._mounted_anywhere() == other._mounted_anywhere()

    def _mounted_anywhere(self) -> DataFacts:
        root = self.source.rstrip("/") + "/"
        kinds = tuple(replace(k, first=tuple(p.removeprefix(root) for p in k.first)) for k in self.left_out)
        return replace(self, source="", left_out=kinds)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> DataFacts | None:
        """The facts a study recorded, or None where it recorded none (or in another form)."""
        try:
            raw = json.loads(text)
            raw["left_out"] = tuple(LeftOut(k["kind"], tuple(k["first"]), k["count"]) for k in raw.get("left_out", ()))
            raw["class_names"], raw["val_per_class"] = tuple(raw["class_names"]), tuple(raw["val_per_class"])
            return cls(**raw)
        except (TypeError, ValueError, KeyError, AttributeError):
            return None

    def summary(self) -> str:
        """A few words: '83 images, 18 classes, 12 people, 3 of them for validation, 2 items left out'."""
        text = f"{self.images:,} images, {len(self.class_names)} classes"
        if self.people is not None and self.folds > 1:
            text += f", {self.people} people, in {self.folds} folds"
        elif self.people is not None:
            text += f", {self.people} people, {self.val_people} of them for validation"
        skipped = sum(k.count for k in self.left_out)
        return text + (f", {skipped} item{'s' if skipped != 1 else ''} left out" if skipped else "")

    def one_image(self) -> tuple[str, int, float] | None:
        """The validation's resolution: how much one image of the rarest validated class, taken for
        the largest class, moves the macro-F1 of otherwise perfect predictions, with that class and
        its count; None with fewer than two validated classes. That image costs its class's F1
        1/(2n - 1) and the largest's 1/(2m + 1), over the validated classes."""
        validated = [(n, name) for name, n in zip(self.class_names, self.val_per_class) if n]
        if len(validated) < 2:
            return None
        (rarest, name), (largest, _) = min(validated), max(validated)
        return name, rarest, (1 / (2 * rarest - 1) + 1 / (2 * largest + 1)) / len(validated)

    def lines(self) -> list[str]:
        """The facts in full, a line each, as ``search status`` and the report show them."""
        people = f" of {self.train_people} and {self.val_people} people" if self.people is not None else ""
        split = f"{self.train_images:,} train and {self.val_images:,} validation images{people}"
        if self.folds > 1:
            by = "person" if self.people is not None else "image"
            split = f"{self.folds} folds by {by}, every image validated once; the first: {split}"
        lines = [
            f"data: {self.summary()}, in {self.source}",
            f"split: {split}",
            f"validation images per class{' (over the folds)' if self.folds > 1 else ''}: "
            + ", ".join(f"{name} {n}" for name, n in zip(self.class_names, self.val_per_class)),
        ]
        for kind in self.left_out:
            shown = ", ".join(kind.first) + (
                f" and {kind.count - len(kind.first)} more" if kind.count > len(kind.first) else ""
            )
            lines.append(f"left out: {kind.count} x {kind.kind} ({kind.why}): {shown}")
        return lines

    def notes(self) -> list[str]:
        """What was left out, as warnings: a line for each item shown, and one counting each kind."""
        notes = []
        for kind in self.left_out:
            notes += [_skipping(kind.kind, path) for path in kind.first]
            if kind.count > len(kind.first) or kind.kind.endswith("image"):
                of = f" of {self.images + kind.count}" if kind.kind.endswith("image") else ""
                notes.append(f"skipped {kind.count} {kind.kind}(s){of} in {self.source}")
        return notes


def _skipping(kind: str, path: str) -> str:
    if kind == "unreadable image":
        return f"skipping unreadable image {path}"
    return f"skipping {path}: {LEFT_OUT.get(kind, kind)}"


def decoded_left_out(skipped: tuple[str, ...], damaged: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """The decode's left-out files as (kind, path): unreadable, gone since the listing, or damaged."""
    gone = [("unreadable image" if os.path.exists(p) else "missing image", p) for p in skipped]
    return gone + [("damaged image", p) for p in damaged]
