"""Augmentation on the training device, for batches of images that already live there.

A study declares its augmentation as albumentations transforms. On the CPU (and for transforms
without a counterpart here) albumentations runs per image. On a GPU, the common competition
transforms run here instead, on the whole batch at once with per-sample random parameters:
every geometric transform of the pipeline folds into one affine matrix per image (one
``grid_sample`` for the batch), then brightness and contrast. Hand-written rather than a GPU
augmentation library: five operations, no extra dependency, and no host round trip.

Parameters follow albumentations' meaning for the same names, so a study reads the same on
either path; random draws differ, so the two paths are not bit-identical.
"""

from __future__ import annotations

import math
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
}


def supported(spec: Sequence[dict[str, Any]] | dict[str, Any]) -> bool:
    """Whether every step of a pipeline (list form) has a device counterpart here."""
    if isinstance(spec, dict):
        return False  # albumentations' own serialised form: keep it on albumentations
    return all(step.get("name") in DEVICE_TRANSFORMS and set(step) - {"name"} <= DEVICE_TRANSFORMS[step["name"]]
               for step in spec)  # fmt: skip


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

    def _uniform(self, n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
        return torch.rand(n, device=device, generator=self.generator) * (high - low) + low

    def _chosen(self, n: int, p: float, device: torch.device) -> torch.Tensor:
        return torch.rand(n, device=device, generator=self.generator) < p

    def reseed(self, epoch: int, device: torch.device) -> None:
        """Each epoch's draws depend only on (seed, epoch): runs are reproducible on one device."""
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)

    def _geometry(self, step: dict[str, Any], n: int, h: int, w: int, device: torch.device) -> torch.Tensor | None:
        """Per-sample 2×3 matrices in normalised coordinates mapping output to input, or None."""
        name = step["name"]
        on = self._chosen(n, float(step.get("p", 0.5 if name != "RandomResizedCrop" else 1.0)), device)
        eye = torch.eye(2, 3, device=device).expand(n, 2, 3).clone()
        if name == "HorizontalFlip":
            eye[on, 0, 0] = -1.0
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
            if step["name"] == "RandomBrightnessContrast":
                continue
            matrix = self._geometry(step, n, h, w, device)
            if affine is None:
                affine = matrix
            else:  # compose: output → (this step) → intermediate → (earlier steps) → input
                row = torch.tensor([0.0, 0.0, 1.0], device=device).expand(n, 1, 3)
                affine = torch.bmm(affine, torch.cat([matrix, row], dim=1))
        if affine is not None:
            grid = F.affine_grid(affine, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        for step in self.steps:
            if step["name"] == "RandomBrightnessContrast":
                on = self._chosen(n, float(step.get("p", 0.5)), device)
                alpha = 1.0 + self._uniform(n, *_pair(step.get("contrast_limit", 0.2), (0, 0), True), device)
                beta = self._uniform(n, *_pair(step.get("brightness_limit", 0.2), (0, 0), True), device) * 255.0
                # Images not chosen get x * 1 + 0: one in-place pass over the batch, no copy.
                alpha, beta = torch.where(on, alpha, 1.0), torch.where(on, beta, 0.0)
                x.mul_(alpha[:, None, None, None]).add_(beta[:, None, None, None])
        return x.clamp_(0.0, 255.0)
