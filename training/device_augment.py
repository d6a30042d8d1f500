"""Augmentation on the training device, for batches of images that already live there.

A study declares its augmentation as albumentations transforms. On the CPU (and for transforms
without a counterpart here) albumentations runs per image. On a GPU, the common competition
transforms run here instead, on the whole batch at once with per-sample random parameters:
every geometric transform of the pipeline folds into one affine matrix per image (one
``grid_sample`` for the batch), then the pixel transforms in the pipeline's order (brightness and
contrast, hue / saturation / value, coarse dropout). Hand-written rather than a GPU augmentation
library: a handful of batched tensor operations, no extra dependency, and no host round trip.

The random parameters (a few numbers per image) are drawn on the host with numpy and go to the
device in one asynchronous copy per batch; the device only touches pixels. Drawing them there
took about a hundred tiny kernels per batch, which a step bound by kernel launches (small
batches) pays in full.

Parameters follow albumentations' meaning for the same names, so a study reads the same on
either path; random draws differ, so the two paths are not bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# albumentations name → the parameters this module understands for it (others are refused).
DEVICE_TRANSFORMS: dict[str, set[str]] = {
    "HorizontalFlip": {"p"},
    "Affine": {"p", "scale", "translate_percent", "rotate"},
    "ShiftScaleRotate": {"p", "shift_limit", "scale_limit", "rotate_limit"},
    "RandomResizedCrop": {"p", "size", "scale", "ratio"},
    "RandomBrightnessContrast": {"p", "brightness_limit", "contrast_limit"},
    "HueSaturationValue": {"p", "hue_shift_limit", "sat_shift_limit", "val_shift_limit"},
    "CoarseDropout": {"p", "num_holes_range", "hole_height_range", "hole_width_range", "fill"},
}
GEOMETRIC = {"HorizontalFlip", "Affine", "ShiftScaleRotate", "RandomResizedCrop"}


def unsupported(spec: Sequence[dict[str, Any]] | dict[str, Any]) -> list[str]:
    """The steps of a pipeline without a device counterpart here, by name (with the parameters this
    module does not take, if that is why)."""
    if isinstance(spec, dict):
        return ["albumentations' serialised pipeline"]  # its own form: kept on albumentations
    out = []
    for step in (step for step in spec if not _supported_step(step)):
        name = step.get("name")
        if name not in DEVICE_TRANSFORMS:
            out.append(str(name))
            continue
        extra = sorted(set(step) - {"name"} - DEVICE_TRANSFORMS[name])
        out.append(f"{name} with {', '.join(extra)}" if extra else f"{name} with fill {step.get('fill')!r}")
    return out


def _supported_step(step: dict[str, Any]) -> bool:
    name = step.get("name")
    if name not in DEVICE_TRANSFORMS or not set(step) - {"name"} <= DEVICE_TRANSFORMS[name]:
        return False
    return name != "CoarseDropout" or isinstance(step.get("fill", 0), (int, float))  # a constant fill only


def _pair(value: Any, default: tuple[float, float], *, symmetric: bool = False) -> tuple[float, float]:
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return (-float(value), float(value)) if symmetric else (float(value), float(value))
    return float(value[0]), float(value[1])


class _Parameters:
    """Host arrays collected for one batch, sent to the device as one buffer (pinned, copied
    without waiting, on CUDA); each comes back as a view of its own shape."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []

    def add(self, array: np.ndarray) -> int:
        self.arrays.append(np.asarray(array, dtype=np.float32))
        return len(self.arrays) - 1

    def send(self, device: torch.device) -> list[torch.Tensor]:
        if not self.arrays:
            return []
        flat = torch.from_numpy(np.concatenate([a.ravel() for a in self.arrays]))
        if device.type == "cuda":
            flat = flat.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            flat = flat.to(device)
        parts = flat.split([a.size for a in self.arrays])
        return [part.view(a.shape) for part, a in zip(parts, self.arrays)]


class DeviceAugment:
    """A pipeline of the transforms above, applied to uint8 NHWC batches, returning float NCHW 0..255."""

    def __init__(self, spec: Sequence[dict[str, Any]], seed: int) -> None:
        self.steps = [dict(step) for step in spec]
        self.seed = seed
        self.rng = np.random.default_rng([seed, 0])

    def reseed(self, epoch: int) -> None:
        """Each epoch's draws depend only on (seed, epoch): runs are reproducible, on any device."""
        self.rng = np.random.default_rng([self.seed, epoch])

    def _uniform(self, shape: int | tuple[int, ...], low: float, high: float) -> np.ndarray:
        return self.rng.random(shape) * (high - low) + low

    def _chosen(self, n: int, p: float, eligible: np.ndarray) -> np.ndarray:
        return (self.rng.random(n) < p) & eligible

    def _subset(self, p: float, eligible: np.ndarray) -> np.ndarray:
        """Indices of the images a costly transform applies to: floor(p n) of the n eligible ones, or
        one more with the remaining chance, so each is chosen with probability p."""
        candidates = np.flatnonzero(eligible)
        count = math.floor(p * len(candidates))
        count += self.rng.random() < p * len(candidates) - count
        return self.rng.permutation(candidates)[:count]

    def _geometry(self, step: dict[str, Any], n: int, h: int, w: int, eligible: np.ndarray) -> np.ndarray:
        """Per-sample 3×3 matrices in normalised coordinates mapping output to input."""
        name = step["name"]
        on = self._chosen(n, float(step.get("p", 0.5 if name != "RandomResizedCrop" else 1.0)), eligible)
        matrix = np.tile(np.eye(3), (n, 1, 1))
        if name == "HorizontalFlip":
            matrix[on, 0, 0] = -1.0
            return matrix
        if name == "RandomResizedCrop":
            area = self._uniform(n, *_pair(step.get("scale"), (0.08, 1.0)))
            ratio = np.exp(self._uniform(n, *(math.log(r) for r in _pair(step.get("ratio"), (3 / 4, 4 / 3)))))
            sx, sy = np.minimum(np.sqrt(area * ratio), 1.0), np.minimum(np.sqrt(area / ratio), 1.0)
            tx, ty = self._uniform(n, -1, 1) * (1 - sx), self._uniform(n, -1, 1) * (1 - sy)
            rows = [[sx, np.zeros(n), tx], [np.zeros(n), sy, ty]]
        else:
            if name == "Affine":
                scale = self._uniform(n, *_pair(step.get("scale"), (1.0, 1.0)))
                shift = _pair(step.get("translate_percent"), (0.0, 0.0), symmetric=True)
                rotate = _pair(step.get("rotate"), (0.0, 0.0), symmetric=True)
            else:  # ShiftScaleRotate
                scale = 1.0 + self._uniform(n, *_pair(step.get("scale_limit", 0.1), (0, 0), symmetric=True))
                shift = _pair(step.get("shift_limit", 0.0625), (0, 0), symmetric=True)
                rotate = _pair(step.get("rotate_limit", 45), (0, 0), symmetric=True)
            tx, ty = self._uniform(n, *shift), self._uniform(n, *shift)
            theta = np.deg2rad(self._uniform(n, *rotate))
            cos, sin = np.cos(theta) / scale, np.sin(theta) / scale
            rows = [[cos, -sin * h / w, -2 * tx], [sin * w / h, cos, -2 * ty]]
        drawn = np.stack([np.stack(row, axis=1) for row in rows], axis=1)  # (n, 2, 3)
        matrix[on, :2] = drawn[on]
        return matrix

    def _brightness_contrast(self, n: int, step: dict[str, Any], eligible: np.ndarray) -> np.ndarray | None:
        """Per-image (gain, offset), identity for the images not chosen; None when none is."""
        on = self._chosen(n, float(step.get("p", 0.5)), eligible)
        alpha = 1.0 + self._uniform(n, *_pair(step.get("contrast_limit", 0.2), (0, 0), symmetric=True))
        beta = self._uniform(n, *_pair(step.get("brightness_limit", 0.2), (0, 0), symmetric=True)) * 255.0
        return np.stack([np.where(on, alpha, 1.0), np.where(on, beta, 0.0)]) if on.any() else None

    def _hue_saturation_value(self, step: dict[str, Any], eligible: np.ndarray) -> np.ndarray | None:
        """albumentations' shifts on uint8 images (hue in OpenCV's units, 0..180 a full turn;
        saturation and value added on 0..255, each clipped), for the chosen images only: the round
        trip through HSV is the pipeline's most costly step. Rows of (image index, hue, saturation
        and value shifts in ``_shift_hsv``'s units); None when no image is chosen."""
        chosen = self._subset(float(step.get("p", 0.5)), eligible)
        if not len(chosen):
            return None
        # In _shift_hsv's units: OpenCV's hue step (2 degrees) is 1/30 of a sixth of a turn;
        # saturation as a fraction of 255; value in levels.
        limits = (("hue_shift_limit", 20, 30.0), ("sat_shift_limit", 30, 255.0), ("val_shift_limit", 20, 1.0))
        shifts = [
            self._uniform(len(chosen), *_pair(step.get(key, limit), (0, 0), symmetric=True)) / unit
            for key, limit, unit in limits
        ]
        return np.stack([chosen, *shifts], axis=1)

    def _coarse_dropout(self, n: int, h: int, w: int, step: dict[str, Any], eligible: np.ndarray) -> np.ndarray | None:
        """Per image and hole slot: (top, bottom, left, right), an empty range for no hole (sizes in
        pixels when the range's top is >= 1, else as fractions of the side); None when no hole."""
        on = self._chosen(n, float(step.get("p", 0.5)), eligible)
        low, high = (int(v) for v in step.get("num_holes_range", (1, 2)))
        count = self.rng.integers(low, high + 1, n)
        holes = np.arange(high)[None, :] < (count * on)[:, None]  # (n, high)

        def sides(key: str, side: int) -> np.ndarray:
            lo, hi = step.get(key, (0.1, 0.2))
            if hi >= 1:
                return self.rng.integers(int(lo), min(int(hi), side) + 1, (n, high))
            return (self._uniform((n, high), float(lo), float(hi)) * side).astype(np.int64)

        heights, widths = sides("hole_height_range", h), sides("hole_width_range", w)
        top = (self.rng.random((n, high)) * (h - heights + 1)).astype(np.int64)
        left = (self.rng.random((n, high)) * (w - widths + 1)).astype(np.int64)
        if not holes.any():
            return None
        bottom = np.where(holes, top + heights, top)  # no hole: rows top..top, none
        return np.stack([top, bottom, left, left + widths], axis=-1)

    def __call__(
        self, images: torch.Tensor, eligible: np.ndarray | None = None, *, in_place: bool = False
    ) -> torch.Tensor:
        """uint8 (N, H, W, 3) or float (N, 3, H, W) on the device → augmented float (N, 3, H, W), 0..255.

        ``eligible`` (a host boolean per image) limits the pipeline to those images; the others come
        back as they were. A float batch is copied first unless ``in_place``."""
        device = images.device
        n, h, w = images.shape[:3] if images.dtype == torch.uint8 else (len(images), *images.shape[2:])
        eligible = np.ones(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
        parameters = _Parameters()
        affine = None
        for step in self.steps:
            if step["name"] in GEOMETRIC:  # output → (this step) → (earlier steps) → input
                matrix = self._geometry(step, n, h, w, eligible)
                affine = matrix if affine is None else affine @ matrix
        geometry = None
        if affine is not None and (affine[:, :2] != np.eye(3)[:2]).any():  # else no image moves
            geometry = parameters.add(affine[:, :2]), parameters.add(eligible) if not eligible.all() else None
        pixels = []
        for step in self.steps:
            name = step["name"]
            if name == "RandomBrightnessContrast":
                drawn = self._brightness_contrast(n, step, eligible)
            elif name == "HueSaturationValue":
                drawn = self._hue_saturation_value(step, eligible)
            elif name == "CoarseDropout":
                drawn = self._coarse_dropout(n, h, w, step, eligible)
            else:
                continue
            if drawn is not None:
                pixels.append((name, step, parameters.add(drawn)))
        sent = parameters.send(device)

        if images.dtype == torch.uint8:
            x = images.permute(0, 3, 1, 2).float()
        else:
            x = images if in_place else images.clone()  # everything below works in place
        if geometry is not None:
            matrices, mask = geometry
            grid = F.affine_grid(sent[matrices], [n, 3, h, w], align_corners=False)
            warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            # Images outside ``eligible`` got the identity: kept exactly rather than resampled.
            x = warped if mask is None else torch.where(sent[mask][:, None, None, None] > 0, warped, x)
        for name, step, index in pixels:
            drawn = sent[index]
            if name == "RandomBrightnessContrast":
                x.mul_(drawn[0, :, None, None, None]).add_(drawn[1, :, None, None, None]).clamp_(0.0, 255.0)
            elif name == "HueSaturationValue":
                chosen = drawn[:, 0].long()
                x[chosen] = _shift_hsv(x[chosen], *(drawn[:, k, None, None] for k in (1, 2, 3)))
            else:
                x.masked_fill_(_holes(drawn, h, w)[:, None], float(step.get("fill", 0)))
        return x.clamp_(0.0, 255.0)


def _holes(bounds: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, H, W) mask of the union of each image's rectangles, given as (top, bottom, left, right)
    per hole slot, (N, K, 4)."""
    rows = torch.arange(h, device=bounds.device, dtype=bounds.dtype)
    cols = torch.arange(w, device=bounds.device, dtype=bounds.dtype)
    in_rows = (rows >= bounds[..., 0:1]) & (rows < bounds[..., 1:2])  # (N, K, H)
    in_cols = (cols >= bounds[..., 2:3]) & (cols < bounds[..., 3:4])  # (N, K, W)
    return torch.einsum("nkh,nkw->nhw", in_rows.float(), in_cols.float()) > 0


def _shift_hsv(
    x: torch.Tensor, hue_shift: torch.Tensor, sat_shift: torch.Tensor, val_shift: torch.Tensor
) -> torch.Tensor:
    """Float RGB (N, 3, H, W) on 0..255 → shifted in HSV → RGB. Shifts per image, (N, 1, 1): hue in
    sixths of a turn, saturation as a fraction of full, value in levels of 0..255."""
    x = x.clamp_(0.0, 255.0)
    value, _ = x.max(dim=1)
    chroma = value - x.min(dim=1).values
    r, g, b = x.unbind(1)
    safe = chroma.clamp(min=1e-6)
    hue = torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4)
    hue = torch.where(value == r, ((g - b) / safe) % 6, hue)
    hue = torch.where(chroma > 0, hue, 0.0)  # in sixths of a turn, 0..6
    hue = (hue + hue_shift) % 6.0
    saturation = (chroma / value.clamp(min=1e-6) + sat_shift).clamp_(0.0, 1.0)  # black: chroma 0
    value = (value + val_shift).clamp_(0.0, 255.0)
    # HSV → RGB for the three channels at once: channel c ramps with (hue + k_c) mod 6, k = 5, 3, 1.
    ramp = (hue[:, None] + torch.arange(5.0, 0.0, -2.0, device=x.device)[:, None, None]) % 6.0
    return value[:, None] - (value * saturation)[:, None] * torch.minimum(ramp, 4.0 - ramp).clamp_(0.0, 1.0)
