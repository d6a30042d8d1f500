"""Scheduler registry: the keys of ``SCHEDULERS`` are exactly the names a study file may use
(``SCHEDULER_PARAMS``).

``step``, ``cosine`` and ``plateau`` step once per epoch (``plateau`` on validation macro-F1,
mode max). Warm-up, when ``warmup_steps`` > 0, is linear over the first optimizer steps and
multiplies whatever the epoch schedule says, so the two compose.
"""

from __future__ import annotations

from collections.abc import Callable

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
    """The epoch schedule plus optional per-step warm-up, behind two calls the loop makes."""

    def __init__(self, optimizer: Optimizer, config: SchedulerConfig, epochs: int) -> None:
        self.epoch_scheduler = SCHEDULERS[config.name](optimizer, config, epochs)
        self.warmup_steps = config.warmup_steps
        self.steps = 0
        self.optimizer = optimizer
        # What the epoch schedule wants now; kept apart so warm-up never compounds with it.
        self.targets = [group["lr"] for group in optimizer.param_groups]
        if self.warmup_steps:
            self._apply_warmup()

    def _apply_warmup(self) -> None:
        factor = min(1.0, (self.steps + 1) / self.warmup_steps)
        for group, target in zip(self.optimizer.param_groups, self.targets):
            group["lr"] = target * factor

    def after_optimizer_step(self) -> None:
        """Called after every optimizer step (warm-up is per step)."""
        self.steps += 1
        if self.warmup_steps and self.steps <= self.warmup_steps:
            self._apply_warmup()

    def after_epoch(self, val_macro_f1: float) -> None:
        """Called once per epoch with the validation macro-F1 (plateau mode max reads it)."""
        if self.warmup_steps and self.steps < self.warmup_steps:
            # Restore the epoch schedule's own values before it steps, then re-apply warm-up.
            for group, target in zip(self.optimizer.param_groups, self.targets):
                group["lr"] = target
        if isinstance(self.epoch_scheduler, sched.ReduceLROnPlateau):
            self.epoch_scheduler.step(val_macro_f1)
        else:
            self.epoch_scheduler.step()
        self.targets = [group["lr"] for group in self.optimizer.param_groups]
        if self.warmup_steps and self.steps < self.warmup_steps:
            self._apply_warmup()

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def build_schedule(optimizer: Optimizer, config: SchedulerConfig, epochs: int) -> Schedule:
    return Schedule(optimizer, config, epochs)
