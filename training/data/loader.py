"""Batches from the decoded uint8 array: order, class-balanced sampling and per-sample augmentation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import albumentations as A
import numpy as np
import torch

from training.errors import ConfigError
from training.per_process import Kept


class BatchOrder:
    """Which samples of one split an epoch serves, in which order and in batches of which sizes.

    The order of epoch ``e`` depends only on (seed, e), so a run is reproducible and an epoch can
    be replayed. ``full_batches``: only full batches while shuffling (one shape per trial; the images
    left out come in other epochs). Both loaders serve their epochs in this order.
    """

    def __init__(self, labels: np.ndarray, indices: np.ndarray, batch_size: int, *, shuffle: bool, seed: int,
                 balanced: bool = False, full_batches: bool = False) -> None:  # fmt: skip
        self.labels = labels
        self.indices = np.asarray(indices)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.balanced = balanced
        self.full_batches = full_batches

    def batch_sizes(self) -> list[int]:
        """The size of every batch of an epoch, in order (the last may be short).

        When shuffling (training), a last batch of one image is left out: batch-norm cannot
        train on it, and the image is in the next epoch's batches anyway.
        """
        full, rest = divmod(len(self.indices), self.batch_size)
        keep_rest = (rest > 1 or (rest == 1 and not self.shuffle)) and not (self.full_batches and self.shuffle and full)
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


class _InOrder:
    """What a loader answers from its ``BatchOrder``: its batches' sizes, and an epoch's order."""

    plan: BatchOrder

    def __len__(self) -> int:
        return len(self.batch_sizes())

    def batch_sizes(self) -> list[int]:
        return self.plan.batch_sizes()

    def order(self, epoch: int) -> np.ndarray:
        return self.plan.order(epoch)


class BatchLoader(_InOrder):
    """Yields ``(images NHWC uint8, labels)`` tensors for one split, epoch by epoch, in ``BatchOrder``.

    Augmentation runs per sample on the uint8 images (albumentations, on the CPU); normalisation
    happens later, on the device, for the whole batch at once.
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
        self.plan = BatchOrder(labels, indices, batch_size, shuffle=shuffle, seed=seed, balanced=balanced)
        self.pipeline = pipeline
        self.rare_pipeline = rare_pipeline
        self.rare_classes = np.asarray(rare_classes, dtype=np.int64)

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


class DeviceBatchLoader(_InOrder):
    """The same ``BatchOrder`` as ``BatchLoader``, served from images resident on the GPU (or in host
    memory when they do not fit, through ``PinnedStaging``) and augmented there: no per-image Python,
    no host round trip. Yields uint8 NHWC batches, or float NCHW (0..255) when augmented.

    Training batches are all full: one shape per trial, so cuDNN's autotuning and ``torch.compile``
    happen once instead of again for a short last batch (its images come in other epochs).
    ``staged`` forces the host path on or off (by default: images on the host, device CUDA).
    """

    def __init__(self, resident: torch.Tensor, labels: np.ndarray, indices: np.ndarray, batch_size: int, *,
                 device: torch.device, shuffle: bool, seed: int, balanced: bool = False,
                 rare_classes: Sequence[int] = (), augment=None, rare_augment=None,
                 staged: bool | None = None) -> None:  # fmt: skip
        self.plan = BatchOrder(labels, indices, batch_size, shuffle=shuffle, seed=seed, balanced=balanced,
                               full_batches=True)  # fmt: skip
        self.device = device
        self.resident = resident
        self.labels = labels
        self.labels_device = torch.as_tensor(labels, device=device)
        self.augment = augment
        self.rare_augment = rare_augment
        self.rare_classes = np.asarray(rare_classes, dtype=np.int64)
        # By label; a rare class may have no image at all (then it is the highest index there is).
        self.is_rare = np.zeros(int(max(labels.max(initial=0), self.rare_classes.max(initial=0))) + 1, dtype=bool)
        self.is_rare[self.rare_classes] = True
        if staged is None:
            staged = not resident.is_cuda and device.type == "cuda"
        self.staging = PinnedStaging(resident, batch_size, device) if staged else None

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = np.ascontiguousarray(self.order(epoch))
        order_host = torch.from_numpy(order)
        order_device = order_host.to(self.device)
        labels = self.labels_device[order_device]  # the epoch's labels in order: each batch's is a view
        for augment in (self.augment, self.rare_augment):
            if augment is not None:
                augment.reseed(epoch)
        sizes = self.batch_sizes()
        starts = [0, *np.cumsum(sizes)[:-1].tolist()]
        rows = order_device if self.resident.is_cuda else order_host
        batch_rows = [rows[start : start + size] for start, size in zip(starts, sizes)]
        if self.staging is not None:
            served = self.staging.batches(batch_rows)
        else:
            served = (self.resident[chosen].to(self.device) for chosen in batch_rows)
        for start, size, images in zip(starts, sizes, served):
            if self.augment is not None:
                images = self.augment(images)
            if self.rare_augment is not None and len(self.rare_classes):
                rare = self.is_rare[self.labels[order[start : start + size]]]
                if rare.any():  # the batch's own images when the first pipeline made them
                    images = self.rare_augment(images, eligible=rare, in_place=self.augment is not None)
            yield images, labels[start : start + size]


class PinnedStaging:
    """Batches of images kept in host memory, gathered into two pinned buffers by a thread one batch
    ahead and copied to the device without the host waiting.

    The images stay where they are (the decode cache's mapping, one copy in the page cache for
    every worker of the machine) instead of each worker pinning a whole copy of its own; the gather
    is a memory copy that releases the interpreter lock, so it overlaps the device's work on the
    batch before. A buffer is filled again only once the device has finished copying out of it (an
    event recorded after the copy). Off CUDA the batch is cloned out of the buffer instead.
    """

    def __init__(self, images: torch.Tensor, batch_size: int, device: torch.device) -> None:
        self.images, self.device = images, device
        pin = device.type == "cuda"
        self.buffers = [torch.empty((batch_size, *images.shape[1:]), dtype=images.dtype, pin_memory=pin)
                        for _ in range(2)]  # fmt: skip
        self.copied: list[torch.cuda.Event | None] = [None, None]

    def _gather(self, slot: int, rows: torch.Tensor) -> torch.Tensor:
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()  # this thread waits for the copy of the batch before last, not the host
        return torch.index_select(self.images, 0, rows, out=self.buffers[slot][: len(rows)])

    def _send(self, slot: int, host: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return host.clone()  # the buffer is filled again two batches on
        images = host.to(self.device, non_blocking=True)
        self.copied[slot] = torch.cuda.Event()
        self.copied[slot].record()
        return images

    def batches(self, batch_rows: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Each batch's images on the device, from its rows (host indices, at most a buffer's)."""
        with ThreadPoolExecutor(1, thread_name_prefix="pinned-staging") as pool:
            ahead = pool.submit(self._gather, 0, batch_rows[0]) if batch_rows else None
            for i in range(len(batch_rows)):
                host = ahead.result()
                if i + 1 < len(batch_rows):  # into the other buffer, once its last copy is done
                    ahead = pool.submit(self._gather, (i + 1) % 2, batch_rows[i + 1])
                yield self._send(i % 2, host)


_RESIDENT: Kept = Kept()  # by device: the last images put there (training/per_process.py)


def resident_images(images: np.ndarray, device: torch.device, share_of_free: float = 0.5) -> torch.Tensor:
    """The decoded images on ``device`` when they fit in ``share_of_free`` of its free memory, else
    where they are in host memory, without a copy (``DeviceBatchLoader`` stages their batches); once
    per process (later trials reuse them). One set of images per device is kept: a worker trains on
    one data set, and a new one takes the place of the old."""
    kept = _RESIDENT.get(str(device))
    if kept is not None and kept[0] is images:
        return kept[1]
    _RESIDENT.pop(str(device), None)  # the old copy's memory goes before the new one is made
    free, _ = torch.cuda.mem_get_info(device)
    host = torch.from_numpy(images)
    _RESIDENT[str(device)] = (images, host.to(device) if images.nbytes < share_of_free * free else host)
    return _RESIDENT[str(device)][1]
