from __future__ import annotations

import math

import pytest
import torch

from training import SchedulerConfig
from training.schedulers import build_schedule


def _schedule(epochs=6, **kw):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    return build_schedule(optimizer, SchedulerConfig(**kw), epochs)


def _per_epoch(schedule, epochs, f1s=None):
    lrs = []
    for e in range(epochs):
        lrs.append(schedule.lr())
        schedule.after_epoch(f1s[e] if f1s else 0.5)
    return lrs


def test_step_decays_every_step_size_epochs():
    lrs = _per_epoch(_schedule(name="step", step_size=2, step_gamma=0.5), 6)
    assert lrs == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])


def test_cosine_t_max_defaults_to_the_epoch_count():
    lrs = _per_epoch(_schedule(epochs=4, name="cosine", eta_min=0.0), 4)
    assert lrs == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])


def test_plateau_follows_validation_f1_in_max_mode():
    f1s = [0.5, 0.6, 0.6, 0.6, 0.7, 0.7]
    lrs = _per_epoch(_schedule(name="plateau", plateau_factor=0.1, plateau_patience=1), 6, f1s)
    # improving F1 keeps the lr; two epochs without improvement (patience 1) cut it
    assert lrs[:3] == pytest.approx([1, 1, 1]) and lrs[3] == pytest.approx(1) and lrs[4] == pytest.approx(0.1)


def test_warmup_is_linear_per_optimizer_step_then_the_schedule_rules():
    schedule = _schedule(name="step", step_size=1, step_gamma=0.5, warmup_steps=4)
    seen = [schedule.lr()]
    for _ in range(5):
        schedule.after_optimizer_step()
        seen.append(schedule.lr())
    assert seen == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    schedule.after_epoch(0.5)
    assert schedule.lr() == pytest.approx(0.5)


def test_warmup_across_an_epoch_boundary_does_not_compound():
    schedule = _schedule(name="cosine", epochs=4, warmup_steps=4)
    schedule.after_optimizer_step()  # 2/4 of the way
    schedule.after_epoch(0.5)  # cosine moves its target to 0.5*(1+cos(pi/4))
    target = 0.5 * (1 + math.cos(math.pi / 4))
    assert schedule.lr() == pytest.approx(target * 0.5)
    for _ in range(3):
        schedule.after_optimizer_step()
    assert schedule.lr() == pytest.approx(target)
