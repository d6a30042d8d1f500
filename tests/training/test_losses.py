from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from training import LossConfig
from training.losses import LOSSES, build_loss

COUNTS = np.array([50, 20, 5, 1])


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(32, 4) * 3, torch.randint(0, 4, (32,))


def test_focal_with_gamma_zero_is_cross_entropy(batch):
    logits, target = batch
    focal = build_loss(LossConfig(name="focal", focal_gamma=0.0), COUNTS)
    assert torch.allclose(focal(logits, target), nn.functional.cross_entropy(logits, target), atol=1e-6)


def test_focal_with_gamma_zero_and_class_weights_is_weighted_cross_entropy(batch):
    logits, target = batch
    focal = build_loss(LossConfig(name="focal", focal_gamma=0.0, class_weights=True), COUNTS)
    ce = build_loss(LossConfig(name="cross_entropy", class_weights=True), COUNTS)
    assert torch.allclose(focal(logits, target), ce(logits, target), atol=1e-6)


def test_focal_down_weights_easy_examples(batch):
    logits, target = batch
    ce = nn.functional.cross_entropy(logits, target)
    assert build_loss(LossConfig(name="focal", focal_gamma=2.0), COUNTS)(logits, target) < ce


def test_focal_alpha_per_class(batch):
    logits, target = batch
    alpha = [1.0, 0.0, 0.0, 0.0]  # only class 0 counts
    loss = build_loss(LossConfig(name="focal", focal_gamma=0.0, focal_alpha=alpha), COUNTS)(logits, target)
    mask = target == 0
    assert torch.allclose(loss, nn.functional.cross_entropy(logits[mask], target[mask]), atol=1e-6)


@pytest.mark.parametrize("s", [0.05, 0.1, 0.3])
def test_label_smoothing_equals_torch(batch, s):
    logits, target = batch
    ours = build_loss(LossConfig(name="label_smoothing", smoothing=s), COUNTS)(logits, target)
    assert torch.allclose(ours, nn.CrossEntropyLoss(label_smoothing=s)(logits, target))


def test_f1_loss_falls_as_predictions_improve(batch):
    _, target = batch
    f1 = build_loss(LossConfig(name="f1"), COUNTS)
    onehot = nn.functional.one_hot(target, 4).float()
    noise = torch.randn(32, 4)
    losses = [f1(noise + k * onehot, target).item() for k in (0.0, 1.0, 2.0, 4.0, 8.0)]
    assert all(a > b for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.05 and 0 <= losses[-1]


def test_class_weights_favour_rare_classes():
    from training.losses import class_weights

    w = class_weights(COUNTS)
    assert w[3] > w[2] > w[1] > w[0] and torch.isclose(w.mean(), torch.tensor(1.0))


def test_every_registered_loss_trains_backward(batch):
    logits, target = batch
    for name in LOSSES:
        x = logits.clone().requires_grad_()
        build_loss(LossConfig(name=name), COUNTS)(x, target).backward()
        assert x.grad is not None and torch.isfinite(x.grad).all(), name


def test_unknown_loss_lists_the_choices():
    with pytest.raises(ValidationError, match=r"unknown loss 'dice', choose from \['cross_entropy', 'f1', 'focal'"):
        LossConfig(name="dice")


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_gradient_stays_finite_when_a_sample_is_certainly_right(gamma):
    # p_t rounds to 1 in float32: (1 - p)^gamma has an infinite slope there when gamma < 1.
    logits = torch.tensor([[40.0, -40.0, 0.0, 0.0], [0.5, 0.2, 0.1, 0.0]], requires_grad=True)
    loss = build_loss(LossConfig(name="focal", focal_gamma=gamma), COUNTS)(logits, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad[1].abs().sum() > 0
