"""Smith's learning-rate range test: one short run whose learning rate rises exponentially at each
optimizer step, from far below any useful rate to far above, with the loss of each step smoothed.
Where the smoothed loss falls fastest, and where it stops falling, bound the rates worth searching.

``lr_find(config, start, end)`` trains the config's model on its data, loss and optimizer, at
its micro-batch size (one optimizer step a batch), and stops once the loss diverges.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from training.accelerate import autocast
from training.config import TrainConfig
from training.errors import ConfigError, DataError
from training.setup import set_up

MIN_STEPS, MAX_STEPS = 40, 200  # one epoch's batches, within these: fewer give no curve, more no news
SMOOTHING = 0.9  # the running average that watches for divergence keeps this share of the last value
DIVERGED = 4.0  # the running average this many times its lowest: the rates from here on diverge
WINDOW = 0.1  # the curve is smoothed over this share of the steps, centred: a running average lags behind


@dataclass(frozen=True)
class LrFindResult:
    """What a range test saw, and the range it suggests."""

    rates: tuple[float, ...]  # each step's learning rate
    losses: tuple[float, ...]  # each step's loss, smoothed over its neighbours (``centred``)
    raw: tuple[float, ...]  # each step's loss
    low: float  # where the smoothed loss falls fastest
    high: float  # where it is lowest: from here on it rises
    diverged_at: float | None  # the rate at which the loss diverged; None if it never did
    seconds: float

    @property
    def steps(self) -> int:
        return len(self.rates)


def rates_between(start: float, end: float, steps: int) -> np.ndarray:
    """``steps`` rates from ``start`` to ``end``, each the last times the same factor."""
    return np.geomspace(start, end, steps)


def centred(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each value's neighbours, ``window`` // 2 on each side (fewer at the ends)."""
    half = window // 2
    sums = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(len(values))
    start, end = np.maximum(index - half, 0), np.minimum(index + half + 1, len(values))
    return (sums[end] - sums[start]) / (end - start)


def suggest(rates: np.ndarray, losses: np.ndarray) -> tuple[float, float]:
    """(where the smoothed loss falls fastest, where it is lowest). The first tenth of the steps is
    left out of the fastest fall: the curve's start is noise around the untrained loss. A fall too close to
    the lowest point to make a range (less than half a decade) gives a decade below it instead."""
    lowest = int(np.argmin(losses))
    high = float(rates[lowest])
    first = max(1, len(rates) // 10)
    if lowest - first < 2:
        return high / 10, high
    slope = np.gradient(losses[first : lowest + 1], np.log(rates[first : lowest + 1]))
    low = float(rates[first + int(np.argmin(slope))])
    return (low, high) if low <= high / math.sqrt(10) else (high / 10, high)


def lr_find(config: TrainConfig, start: float, end: float, steps: int | None = None) -> LrFindResult:
    """Train ``config`` from its first step with the rate rising from ``start`` to ``end`` over
    ``steps`` optimizer steps (default: one epoch's batches, within ``MIN_STEPS``..``MAX_STEPS``),
    until the loss diverges. A loss that diverges within the first few steps is a ``ConfigError``:
    the range starts too high for anything to train."""
    began = time.perf_counter()
    run = set_up(config)
    if not run.train_loader.batch_sizes():
        raise DataError("the training split has no full batch for the learning-rate range test: give it more images")
    steps = steps or min(MAX_STEPS, max(MIN_STEPS, len(run.train_loader.batch_sizes())))
    planned = rates_between(start, end, steps)
    rates, losses, average, lowest, diverged = [], [], 0.0, math.inf, None
    run.forward.train()
    epoch = 0
    while len(rates) < steps:
        for images, labels in run.train_loader.batches(epoch):
            rate = float(planned[len(rates)])
            for group in run.optimizer.param_groups:
                group["lr"] = rate
            labels = labels.to(run.pipe.device, non_blocking=True)
            with autocast(run.pipe.device):
                loss = run.loss_fn(run.forward(run.pipe(images)), labels)
            loss.backward()
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            running = average / (1 - SMOOTHING ** (len(rates) + 1))  # the average's start, unbiased
            if not math.isfinite(value) or running > DIVERGED * lowest:
                diverged = rate
                break
            rates.append(rate)
            losses.append(value)
            lowest = min(lowest, running)
            if len(rates) == steps:
                break
        if diverged is not None:
            break
        epoch += 1
    del run  # the model, optimizer and images: freed before a trial needs the memory
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if diverged is not None and len(rates) < max(3, min(steps, MIN_STEPS) // 4):
        raise ConfigError(
            f"the loss diverged after {len(rates)} steps of the learning-rate range test, at lr {diverged:.2g}: "
            f"the test starts at {start:.2g}; lower the space's lr bounds (lr_find's low and high)"
        )
    smoothed = centred(np.array(losses), max(3, int(WINDOW * len(rates))))
    low, high = suggest(np.array(rates), smoothed)
    diverged = diverged or diverged_after(np.array(rates), smoothed)
    return LrFindResult(tuple(rates), tuple(smoothed), tuple(losses), low, high, diverged, time.perf_counter() - began)


def diverged_after(rates: np.ndarray, smoothed: np.ndarray) -> float | None:
    """The first rate past the lowest point at which the centred curve is ``DIVERGED`` times its
    lowest, or None. The running average that stops the test lags by about ten steps, so a short
    test can end with a loss many times its lowest that the running average never saw."""
    lowest = int(np.argmin(smoothed))
    above = np.flatnonzero(smoothed[lowest:] > DIVERGED * smoothed[lowest])
    return float(rates[lowest + above[0]]) if len(above) else None


def default_bounds(low: float, high: float) -> tuple[float, float]:
    """Where a range test starts and ends for a space from ``low`` to ``high``: 100 times below and
    above it, so the test sees both the rates too small to move and those that diverge."""
    return low / 100, high * 100
