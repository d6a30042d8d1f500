from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training import SchedulerConfig
from training.data.loader import BatchLoader
from training.loop import accumulation_weights, train_one_epoch
from training.schedulers import build_schedule
from training.setup import InputPipe


def _model():
    torch.manual_seed(0)
    # No batch-norm, no dropout: the update depends only on the mean gradient.
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5))


def _step(batch_size, accumulation, n=32):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 4, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, n)
    loader = BatchLoader(images, labels, np.arange(n), batch_size, shuffle=False, seed=0)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    schedule = build_schedule(optimizer, SchedulerConfig(name="step", step_size=100), 1)
    pipe = InputPipe((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"))
    train_one_epoch(model, loader, 0, pipe, nn.CrossEntropyLoss(), optimizer, schedule, accumulation)
    return [p.detach().clone() for p in model.parameters()], schedule.steps


def test_four_micro_batches_of_eight_equal_one_batch_of_32():
    big, big_steps = _step(32, 1)
    accumulated, steps = _step(8, 4)
    assert big_steps == steps == 1
    for a, b in zip(big, accumulated):
        assert torch.allclose(a, b, atol=1e-6)


def test_trailing_partial_group_steps_and_is_weighted_by_its_size():
    # 40 samples in micro-batches of 8 with k = 4: one full group of 32, then a group of 8.
    weights = accumulation_weights([8, 8, 8, 8, 8], 4)
    assert weights == [(0.25, False), (0.25, False), (0.25, False), (0.25, True), (1.0, True)]
    # A short last micro-batch weighs by its share of its group.
    assert accumulation_weights([8, 8, 4], 2) == [(0.5, False), (0.5, True), (1.0, True)]
    assert accumulation_weights([8, 8, 8, 4], 4)[-1] == (4 / 28, True)


def test_gradients_are_zeroed_after_each_step():
    _, steps = _step(8, 2)
    assert steps == 2  # 4 micro-batches, k = 2
