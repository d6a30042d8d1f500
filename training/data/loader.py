"""Batches from the decoded uint8 array: order, class-balanced sampling and per-sample augmentation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import albumentations as A
import numpy as np
import torch

from training.errors import ConfigError


class BatchLoader:
    """Yields ``(images NHWC uint8, labels)`` tensors for one split, epoch by epoch.

    The order of epoch ``e`` depends only on (seed, e), so a run is reproducible and an epoch
    can be replayed. Augmentation runs per sample on the uint8 images; normalisation happens
    later, on the device, for the whole batch at once.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        pipeline: A.Compose | None = None,
        rare_pipeline: A.Compose | None = None,
        rare_classes: Sequence[int] = (),
        balanced: bool = False,
    ) -> None:
        self.images = images
        self.labels = labels
        self.indices = np.asarray(indices)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.pipeline = pipeline
        self.rare_pipeline = rare_pipeline
        self.rare_classes = np.asarray(rare_classes, dtype=np.int64)
        self.balanced = balanced

    def __len__(self) -> int:
        return len(self.batch_sizes())

    def batch_sizes(self) -> list[int]:
        """The size of every batch of an epoch, in order (the last may be short).

        When shuffling (training), a last batch of one image is left out: batch-norm cannot
        train on it, and the image is in the next epoch's batches anyway.
        """
        full, rest = divmod(len(self.indices), self.batch_size)
        keep_rest = rest > 1 or (rest == 1 and not self.shuffle)
        return [self.batch_size] * full + ([rest] if keep_rest else [])

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of epoch ``epoch``, in the order they are served."""
        if not self.shuffle:
            return self.indices
        rng = np.random.default_rng([self.seed, epoch])
        if self.balanced:
            # Every class is drawn equally often; rare images repeat, common ones are subsampled.
            counts = np.bincount(self.labels[self.indices])
            weights = 1.0 / counts[self.labels[self.indices]]
            return rng.choice(self.indices, size=len(self.indices), replace=True, p=weights / weights.sum())
        return rng.permutation(self.indices)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order(epoch)
        start = 0
        for size in self.batch_sizes():
            chosen = order[start : start + size]
            start += size
            images = self.images[chosen]  # fancy indexing copies: augmenting in place is safe
            labels = self.labels[chosen]
            if self.pipeline is not None:
                self._augment(images, self.pipeline, range(len(chosen)))
            if self.rare_pipeline is not None and len(self.rare_classes):
                self._augment(images, self.rare_pipeline, np.flatnonzero(np.isin(labels, self.rare_classes)))
            yield torch.from_numpy(images), torch.from_numpy(labels)

    @staticmethod
    def _augment(images: np.ndarray, pipeline: A.Compose, which: Sequence[int]) -> None:
        for i in which:
            out = pipeline(image=images[i])["image"]
            if out.shape != images[i].shape or out.dtype != np.uint8:
                raise ConfigError(
                    f"augmentation changed an image from {images[i].shape} uint8 to {out.shape} {out.dtype}; "
                    "keep the size (e.g. RandomResizedCrop with size = data.image_size) and leave Normalize out"
                )
            images[i] = out


def rarest_classes(labels: np.ndarray, num_classes: int, fraction: float) -> list[int]:
    """The ``fraction`` of classes with the fewest images (at least one class when fraction > 0)."""
    if fraction <= 0:
        return []
    counts = np.bincount(labels, minlength=num_classes)
    n = max(1, round(fraction * num_classes))
    return sorted(int(c) for c in np.argsort(counts, kind="stable")[:n])


class DeviceBatchLoader(BatchLoader):
    """The same order as ``BatchLoader``, served from images resident on the GPU (or in pinned host
    memory when they do not fit) and augmented there: no per-image Python, no host round trip.
    Yields uint8 NHWC batches, or float NCHW (0..255) when augmented.

    Training batches are all full: one shape per trial, so cuDNN's autotuning and ``torch.compile``
    happen once instead of again for a short last batch (its images come in other epochs).
    """

    def __init__(self, resident: torch.Tensor, labels: np.ndarray, indices: np.ndarray, batch_size: int, *,
                 device: torch.device, augment=None, rare_augment=None, **kwargs) -> None:  # fmt: skip
        super().__init__(resident, labels, indices, batch_size, **kwargs)
        self.device = device
        self.resident = resident
        self.labels_device = torch.as_tensor(labels, device=device)
        self.augment = augment
        self.rare_augment = rare_augment
        # By label; a rare class may have no image at all (then it is the highest index there is).
        self.is_rare = np.zeros(int(max(labels.max(initial=0), self.rare_classes.max(initial=0))) + 1, dtype=bool)
        self.is_rare[self.rare_classes] = True

    def batch_sizes(self) -> list[int]:
        sizes = super().batch_sizes()
        full = [size for size in sizes if size == self.batch_size]
        return full if self.shuffle and full else sizes

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = np.ascontiguousarray(self.order(epoch))
        order_host = torch.from_numpy(order)
        order_device = order_host.to(self.device)
        labels = self.labels_device[order_device]  # the epoch's labels in order: each batch's is a view
        for augment in (self.augment, self.rare_augment):
            if augment is not None:
                augment.reseed(epoch)
        start = 0
        for size in self.batch_sizes():
            rows = order_device if self.resident.is_cuda else order_host
            images = self.resident[rows[start : start + size]].to(self.device, non_blocking=True)
            if self.augment is not None:
                images = self.augment(images)
            if self.rare_augment is not None and len(self.rare_classes):
                rare = self.is_rare[self.labels[order[start : start + size]]]
                if rare.any():  # the batch's own images when the first pipeline made them
                    images = self.rare_augment(images, eligible=rare, in_place=self.augment is not None)
            yield images, labels[start : start + size]
            start += size


_RESIDENT: dict[tuple[int, str], torch.Tensor] = {}


def resident_images(images: np.ndarray, device: torch.device, share_of_free: float = 0.5) -> torch.Tensor:
    """The decoded images on ``device`` when they fit in ``share_of_free`` of its free memory, else
    in pinned host memory; once per process (later trials reuse them)."""
    key = (id(images), str(device))
    if key not in _RESIDENT:
        free, _ = torch.cuda.mem_get_info(device)
        host = torch.from_numpy(images)
        _RESIDENT[key] = host.to(device) if images.nbytes < share_of_free * free else host.pin_memory()
    return _RESIDENT[key]
