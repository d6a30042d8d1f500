"""Scheduler registry: the keys of ``SCHEDULERS`` are exactly the names a study file may use
(``SCHEDULER_PARAMS``).

``step``, ``cosine`` and ``plateau`` step once per epoch (``plateau`` on the run's objective,
mode max). Warm-up, when ``warmup_steps`` > 0, is linear over the first optimizer steps. A rate is
one formula: the epoch schedule's rate times the warm-up's factor, so the two compose and never
compound. docs/design.md says why these are torch's schedulers rather than timm's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

from training.config import SchedulerConfig

SCHEDULERS: dict[str, Callable[[Optimizer, SchedulerConfig, int], object]] = {
    "step": lambda opt, c, epochs: sched.StepLR(opt, step_size=c.step_size, gamma=c.step_gamma),
    "cosine": lambda opt, c, epochs: sched.CosineAnnealingLR(opt, T_max=c.t_max or epochs, eta_min=c.eta_min),
    "plateau": lambda opt, c, epochs: sched.ReduceLROnPlateau(
        opt, mode="max", factor=c.plateau_factor, patience=c.plateau_patience
    ),
}


class Schedule:
    """The learning rate of each optimizer step, behind the two calls the loop makes: after each
    optimizer step, and after each epoch with the epoch's objective.

    The epoch schedule runs on a stand-in optimizer whose parameter groups hold nothing but each
    group's epoch rate; the real optimizer's rate is that rate times the warm-up factor."""

    def __init__(self, optimizer: Optimizer, config: SchedulerConfig, epochs: int) -> None:
        self.optimizer = optimizer
        self.warmup_steps = config.warmup_steps
        self.steps = 0
        self.epoch_rates = torch.optim.SGD(
            [{"params": [torch.zeros(())], "lr": g["lr"]} for g in optimizer.param_groups]
        )
        self.epoch_scheduler = SCHEDULERS[config.name](self.epoch_rates, config, epochs)
        self._set_rates()

    def _set_rates(self) -> None:
        factor = min(1.0, (self.steps + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        for group, epoch_group in zip(self.optimizer.param_groups, self.epoch_rates.param_groups):
            group["lr"] = epoch_group["lr"] * factor

    def after_optimizer_step(self) -> None:
        """Called after every optimizer step (warm-up is per step)."""
        self.steps += 1
        self._set_rates()

    def after_epoch(self, objective: float) -> None:
        """Called once per epoch with the epoch's objective (the plateau schedule, mode max, reads it)."""
        self.epoch_rates.step()  # nothing to update; torch's schedulers expect their optimizer stepped first
        if isinstance(self.epoch_scheduler, sched.ReduceLROnPlateau):
            self.epoch_scheduler.step(objective)
        else:
            self.epoch_scheduler.step()
        self._set_rates()

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def build_schedule(optimizer: Optimizer, config: SchedulerConfig, epochs: int) -> Schedule:
    return Schedule(optimizer, config, epochs)
