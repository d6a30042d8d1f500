"""Augmentation on the training device, for batches of images that already live there.

A study declares its augmentation as albumentations transforms. On the CPU (and for transforms
without a counterpart here) albumentations runs per image. On a GPU, the common competition
transforms run here instead, on the whole batch at once with per-sample random parameters:
every geometric transform of the pipeline folds into one affine matrix per image (one
``grid_sample`` for the batch), then the pixel transforms in the pipeline's order (brightness and
contrast, hue / saturation / value, coarse dropout). Hand-written rather than a GPU augmentation
library: a handful of batched tensor operations, no extra dependency, and no host round trip.

Parameters follow albumentations' meaning for the same names, so a study reads the same on
either path; random draws differ, so the two paths are not bit-identical.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

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


def supported(spec: Sequence[dict[str, Any]] | dict[str, Any]) -> bool:
    """Whether every step of a pipeline (list form) has a device counterpart here."""
    if isinstance(spec, dict):
        return False  # albumentations' own serialised form: keep it on albumentations
    return all(_supported_step(step) for step in spec)


def _supported_step(step: dict[str, Any]) -> bool:
    name = step.get("name")
    if name not in DEVICE_TRANSFORMS or not set(step) - {"name"} <= DEVICE_TRANSFORMS[name]:
        return False
    return name != "CoarseDropout" or isinstance(step.get("fill", 0), (int, float))  # a constant fill only


def _pair(value: Any, default: tuple[float, float], symmetric: bool = False) -> tuple[float, float]:
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return (-float(value), float(value)) if symmetric else (float(value), float(value))
    return float(value[0]), float(value[1])


class DeviceAugment:
    """A pipeline of the transforms above, applied to uint8 NHWC batches, returning float NCHW 0..255."""

    def __init__(self, spec: Sequence[dict[str, Any]], seed: int) -> None:
        self.steps = [dict(step) for step in spec]
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.host_rng = random.Random()

    def _uniform(self, n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
        return torch.rand(n, device=device, generator=self.generator) * (high - low) + low

    def _chosen(self, n: int, p: float, device: torch.device) -> torch.Tensor:
        return torch.rand(n, device=device, generator=self.generator) < p

    def reseed(self, epoch: int, device: torch.device) -> None:
        """Each epoch's draws depend only on (seed, epoch): runs are reproducible on one device."""
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)
        self.host_rng.seed(self.seed * 1_000_003 + epoch)

    def _subset(self, n: int, p: float, device: torch.device) -> torch.Tensor:
        """Indices of the images a costly transform applies to: floor(p n) of them, or one more with
        the remaining chance, so each image is chosen with probability p. The count is drawn on the
        host: the subset has a known size without reading anything back from the device."""
        count = math.floor(p * n)
        count += self.host_rng.random() < p * n - count
        return torch.randperm(n, device=device, generator=self.generator)[:count]

    def _geometry(self, step: dict[str, Any], n: int, h: int, w: int, device: torch.device) -> torch.Tensor | None:
        """Per-sample 2×3 matrices in normalised coordinates mapping output to input, or None."""
        name = step["name"]
        on = self._chosen(n, float(step.get("p", 0.5 if name != "RandomResizedCrop" else 1.0)), device)
        eye = torch.eye(2, 3, device=device).expand(n, 2, 3).clone()
        if name == "HorizontalFlip":  # a mask assignment (eye[on] = ...) would read the mask back to the host
            eye[:, 0, 0] = torch.where(on, -1.0, 1.0)
            return eye
        if name == "RandomResizedCrop":
            area = self._uniform(n, *_pair(step.get("scale"), (0.08, 1.0)), device)
            log_ratio = self._uniform(n, *(math.log(r) for r in _pair(step.get("ratio"), (3 / 4, 4 / 3))), device)
            ratio = log_ratio.exp()
            sx = (area * ratio).sqrt().clamp(max=1.0)
            sy = (area / ratio).sqrt().clamp(max=1.0)
            tx = (self._uniform(n, -1, 1, device)) * (1 - sx)
            ty = (self._uniform(n, -1, 1, device)) * (1 - sy)
            matrix = torch.zeros(n, 2, 3, device=device)
            matrix[:, 0, 0], matrix[:, 1, 1], matrix[:, 0, 2], matrix[:, 1, 2] = sx, sy, tx, ty
            return torch.where(on[:, None, None], matrix, eye)
        if name == "Affine":
            scale = self._uniform(n, *_pair(step.get("scale"), (1.0, 1.0)), device)
            shift = _pair(step.get("translate_percent"), (0.0, 0.0), symmetric=True)
            tx, ty = self._uniform(n, *shift, device), self._uniform(n, *shift, device)
            angle = self._uniform(n, *_pair(step.get("rotate"), (0.0, 0.0), symmetric=True), device)
        else:  # ShiftScaleRotate
            scale = 1.0 + self._uniform(n, *_pair(step.get("scale_limit", 0.1), (0, 0), symmetric=True), device)
            shift = _pair(step.get("shift_limit", 0.0625), (0, 0), symmetric=True)
            tx, ty = self._uniform(n, *shift, device), self._uniform(n, *shift, device)
            angle = self._uniform(n, *_pair(step.get("rotate_limit", 45), (0, 0), symmetric=True), device)
        theta = angle * (math.pi / 180.0)
        cos, sin = theta.cos() / scale, theta.sin() / scale
        matrix = torch.stack(
            [
                torch.stack([cos, -sin * h / w, -2 * tx], dim=1),
                torch.stack([sin * w / h, cos, -2 * ty], dim=1),
            ],
            dim=1,
        )
        return torch.where(on[:, None, None], matrix, eye)

    def _brightness_contrast(self, x: torch.Tensor, step: dict[str, Any]) -> None:
        n, device = len(x), x.device
        on = self._chosen(n, float(step.get("p", 0.5)), device)
        alpha = 1.0 + self._uniform(n, *_pair(step.get("contrast_limit", 0.2), (0, 0), True), device)
        beta = self._uniform(n, *_pair(step.get("brightness_limit", 0.2), (0, 0), True), device) * 255.0
        # Images not chosen get x * 1 + 0: one in-place pass over the batch, no copy.
        alpha, beta = torch.where(on, alpha, 1.0), torch.where(on, beta, 0.0)
        x.mul_(alpha[:, None, None, None]).add_(beta[:, None, None, None]).clamp_(0.0, 255.0)

    def _hue_saturation_value(self, x: torch.Tensor, step: dict[str, Any]) -> None:
        """albumentations' shifts on uint8 images: hue in OpenCV's units (0..180 = a full turn),
        saturation and value added on 0..255, each clipped. Computed for the chosen images only
        (the round trip through HSV is the most costly step of the pipeline)."""
        chosen = self._subset(len(x), float(step.get("p", 0.5)), x.device)
        if not len(chosen):
            return
        limits = (("hue_shift_limit", 20), ("sat_shift_limit", 30), ("val_shift_limit", 20))
        shifts = [
            self._uniform(len(chosen), *_pair(step.get(key, limit), (0, 0), True), x.device) for key, limit in limits
        ]
        x[chosen] = _shift_hsv(x[chosen], *(shift[:, None, None] for shift in shifts))

    def _coarse_dropout(self, x: torch.Tensor, step: dict[str, Any]) -> None:
        """Between ``num_holes_range`` rectangles per chosen image set to ``fill`` (sizes in pixels when
        the range's top is >= 1, else as fractions of the side), placed wholly inside the image."""
        n, _, h, w = x.shape
        device = x.device
        on = self._chosen(n, float(step.get("p", 0.5)), device)
        low, high = (int(v) for v in step.get("num_holes_range", (1, 2)))
        count = torch.randint(low, high + 1, (n,), device=device, generator=self.generator)
        holes = torch.arange(high, device=device)[None, :] < (count * on)[:, None]  # (n, high)

        def sides(key: str, side: int) -> torch.Tensor:
            lo, hi = step.get(key, (0.1, 0.2))
            if hi >= 1:
                lo, hi = int(lo), min(int(hi), side)
                return torch.randint(lo, hi + 1, (n, high), device=device, generator=self.generator)
            return (self._uniform(n * high, float(lo), float(hi), device).view(n, high) * side).long()

        heights, widths = sides("hole_height_range", h), sides("hole_width_range", w)
        top = (torch.rand(n, high, device=device, generator=self.generator) * (h - heights + 1)).long()
        left = (torch.rand(n, high, device=device, generator=self.generator) * (w - widths + 1)).long()
        rows = torch.arange(h, device=device)[None, None, :]
        cols = torch.arange(w, device=device)[None, None, :]
        in_rows = (rows >= top[..., None]) & (rows < (top + heights)[..., None]) & holes[..., None]
        in_cols = (cols >= left[..., None]) & (cols < (left + widths)[..., None])
        mask = torch.einsum("nkh,nkw->nhw", in_rows.float(), in_cols.float()) > 0
        x.masked_fill_(mask[:, None], float(step.get("fill", 0)))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) or float (N, 3, H, W) on the device → augmented float (N, 3, H, W), 0..255."""
        device = images.device
        if self.generator is None:
            self.reseed(0, device)
        # A new float tensor either way: everything below may work in place.
        x = images.permute(0, 3, 1, 2).float() if images.dtype == torch.uint8 else images.clone()
        n, _, h, w = x.shape
        affine: torch.Tensor | None = None
        for step in self.steps:
            if step["name"] not in GEOMETRIC:
                continue
            matrix = self._geometry(step, n, h, w, device)
            if affine is None:
                affine = matrix
            else:  # compose: output → (this step) → intermediate → (earlier steps) → input
                affine = _compose(affine, matrix)
        if affine is not None:
            grid = F.affine_grid(affine, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        for step in self.steps:
            if step["name"] == "RandomBrightnessContrast":
                self._brightness_contrast(x, step)
            elif step["name"] == "HueSaturationValue":
                self._hue_saturation_value(x, step)
            elif step["name"] == "CoarseDropout":
                self._coarse_dropout(x, step)
        return x.clamp_(0.0, 255.0)


def _compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """``outer ∘ inner`` for batches of 2×3 affine matrices (each read as 3×3 with a last row 0 0 1),
    made on the device: a constant row built from a Python list would be a blocking host copy."""
    out = torch.bmm(outer[:, :, :2], inner)
    out[:, :, 2] += outer[:, :, 2]
    return out


def _shift_hsv(
    x: torch.Tensor, hue_shift: torch.Tensor, sat_shift: torch.Tensor, val_shift: torch.Tensor
) -> torch.Tensor:
    """Float RGB (N, 3, H, W) on 0..255 → shifted in HSV (hue in OpenCV's 2-degree units) → RGB."""
    x = x.clamp_(0.0, 255.0)
    value, _ = x.max(dim=1)
    chroma = value - x.min(dim=1).values
    saturation = torch.where(value > 0, chroma / value.clamp(min=1e-6), 0.0) * 255.0
    r, g, b = x.unbind(1)
    safe = chroma.clamp(min=1e-6)
    hue = torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4)
    hue = torch.where(value == r, ((g - b) / safe) % 6, hue)
    hue = torch.where(chroma > 0, hue, 0.0)  # in sixths of a turn, 0..6
    hue = (hue + hue_shift / 30.0) % 6.0  # OpenCV's hue unit is 2 degrees = 1/30 of a sixth
    saturation = (saturation + sat_shift).clamp_(0.0, 255.0) / 255.0
    value = (value + val_shift).clamp_(0.0, 255.0)
    out = torch.empty_like(x)
    for channel, k in enumerate((5.0, 3.0, 1.0)):  # HSV → RGB, channel by channel
        ramp = (hue + k) % 6.0
        out[:, channel] = value - value * saturation * torch.minimum(ramp, 4.0 - ramp).clamp(0.0, 1.0)
    return out
