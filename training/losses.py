"""Loss registry: the keys of ``LOSSES`` are exactly the names a study file may use (``LOSS_PARAMS``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.config import LossConfig


class FocalLoss(nn.Module):
    """Focal loss (Lin et al.): cross-entropy scaled by (1 - p_t)^gamma; gamma 0 is cross-entropy.

    Per-class ``weight`` (alpha and/or inverse frequency) is normalised like torch's weighted
    cross-entropy, so that with gamma 0 the two agree exactly.
    """

    def __init__(self, gamma: float, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        # (1 - p)^gamma has an infinite slope at p = 1 when gamma < 1: a confidently right sample
        # (p rounds to 1) would make the gradient NaN. Below the floor the factor is flat instead.
        loss = -((-log_p.expm1()).clamp(min=1e-6) ** self.gamma) * log_p
        if self.weight is None:
            return loss.mean()
        w = self.weight[target]
        return (w * loss).sum() / w.sum()


class SoftF1Loss(nn.Module):
    """1 − macro-F1 computed on softmax probabilities, so it is differentiable; the classes are the
    logits' columns."""

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(logits.float(), dim=1)
        # scatter, not F.one_hot: one_hot reads the labels' range back on the CPU (not on CUDA), and
        # the loop is kept free of reads on every device so that a test on the CPU can see them
        onehot = torch.zeros_like(probs).scatter_(1, target[:, None], 1.0)
        tp = (probs * onehot).sum(0)
        fp = (probs * (1 - onehot)).sum(0)
        fn = ((1 - probs) * onehot).sum(0)
        f1 = 2 * tp / (2 * tp + fp + fn + self.eps)
        return 1.0 - f1.mean()


def class_weights(class_counts: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights, scaled to average 1 over the classes."""
    counts = torch.as_tensor(class_counts, dtype=torch.float32).clamp(min=1)
    weights = counts.sum() / counts
    return weights * (len(counts) / weights.sum())


def _weight(config: LossConfig, class_counts: np.ndarray) -> torch.Tensor | None:
    weight = class_weights(class_counts) if config.class_weights else None
    if config.name == "focal" and config.focal_alpha is not None:
        alpha = torch.as_tensor(config.focal_alpha, dtype=torch.float32)
        if len(alpha) != len(class_counts):
            from training.errors import ConfigError

            raise ConfigError(f"loss.focal_alpha has {len(alpha)} values for {len(class_counts)} classes")
        weight = alpha if weight is None else weight * alpha
    return weight


LOSSES: dict[str, Callable[[LossConfig, np.ndarray], nn.Module]] = {
    "cross_entropy": lambda c, counts: nn.CrossEntropyLoss(weight=_weight(c, counts)),
    "focal": lambda c, counts: FocalLoss(c.focal_gamma, _weight(c, counts)),
    "label_smoothing": lambda c, counts: nn.CrossEntropyLoss(weight=_weight(c, counts), label_smoothing=c.smoothing),
    "f1": lambda c, counts: SoftF1Loss(),
}


def build_loss(config: LossConfig, class_counts: np.ndarray) -> nn.Module:
    """The configured loss for a data set with these per-class training counts."""
    return LOSSES[config.name](config, np.asarray(class_counts))
