"""The learning-rate range test of a study (``training.lr_find``): run on the study's own settings,
between bounds far outside its space, and what it found said three ways: a line, the space's
``lr`` entry to use, and a plot of the smoothed loss against the rate with the range marked."""

from __future__ import annotations

import math
from pathlib import Path

from search.pictures import new_figure
from search.study.schema import Study
from training import ConfigError


def bounds(spec: Study) -> tuple[float, float]:
    """Where the test starts and ends: 100 times below and above the study's lr range, or its one
    fixed lr where the space does not search it."""
    from training import default_bounds

    searched = spec.space.distribution("lr", {})
    if searched is not None and searched.low is not None and searched.high is not None:
        return default_bounds(searched.low, searched.high)
    if searched is not None:
        raise ConfigError(f"study '{spec.name}': space.lr is a list of choices; the range test needs {{low, high}}")
    return default_bounds(spec.train.optimizer.lr, spec.train.optimizer.lr)


def find_range(spec: Study, steps: int | None = None):
    """The range test on the study's model, data, loss and optimizer at the study's first settings
    (``RangeTest``). Where the loss never diverged, the lowest loss may lie past the test's end:
    the range then ends no higher than the space's own bound (100 times below the test's end)."""
    import dataclasses

    from training import range_test

    start, end = bounds(spec)
    test = range_test(spec.trial_config({}, None), start, end, steps)
    low, high = test.low, test.high
    if test.diverged_at is None and high > end / 100:
        high = end / 100
        low = min(low, high / 10)
    # to three figures, as printed: the range a user reads is the one searched
    return dataclasses.replace(test, low=float(f"{low:.2e}"), high=float(f"{high:.2e}"))


def space_entry(test) -> str:
    """The space's ``lr`` entry that searches the range found, as a study file writes it."""
    return f"{{low: {test.low:.2e}, high: {test.high:.2e}, log: true}}"


def moved_inside(lrs: list[float], low: float, high: float) -> dict[float, float]:
    """Where queued rates outside the range ``low``..``high`` train instead, as {rate: moved}: all
    multiplied by one factor that puts their centre (on a log scale) at the range's middle, then
    clipped to it, to three figures. Rates inside stay: the range test does not rule them out. Moved
    as one, those outside keep their ratios where the range is wider than their spread: two guesses
    stay two, and one alone lands on the middle. The edges are where the loss falls fastest and where
    it stops falling."""
    outside = list(dict.fromkeys(lr for lr in lrs if not low <= lr <= high))  # in the study file's order
    if not outside:
        return {}
    centre = math.exp(sum(math.log(lr) for lr in outside) / len(outside))
    factor = math.sqrt(low * high) / centre
    return {lr: float(f"{min(high, max(low, lr * factor)):.3g}") for lr in outside}


def describe_moved(moved: dict[float, float], low: float, high: float) -> str:
    """The run's words for ``moved_inside``: the range, each queued rate and where it trains."""
    pairs = ", ".join(f"{lr:g} -> {to:g}" for lr, to in moved.items())
    clipped = "; those past its edges clipped to them" if {low, high} & set(moved.values()) else ""
    recorded = f"the range recorded, {low:.2e} to {high:.2e}"
    return f"queued lr outside {recorded}, moved as one around its middle: {pairs}{clipped}"


def queued_outside(spec: Study, test) -> list[float]:
    """The lr of the study's queued trials that lie outside the range the test found."""
    return [q["lr"] for q in spec.enqueue if "lr" in q and not test.low <= q["lr"] <= test.high]


def summary(spec: Study, test) -> list[str]:
    """What the test found, and how to use it."""
    ended = f"diverged at {test.diverged_at:.2g}" if test.diverged_at else "never diverged"
    drop = " --set 'enqueue=[]'"
    outside = queued_outside(spec, test)
    lines = [
        f"lr-find: {test.steps} steps from {test.rates[0]:.2g} to {test.rates[-1]:.2g} ({ended}), {test.seconds:.0f} s",
        f"suggested lr: {test.low:.2e} to {test.high:.2e} (the smoothed loss is lowest at {test.high:.2e}, "
        "and falls fastest at the range's start or, closer than half a decade, a decade below it)",
        f"  search run --study {spec.name} --set 'space.lr={space_entry(test)}'" + (drop if outside else ""),
        f"  or in the study file, under space:  lr: {space_entry(test)}",
    ]
    if outside:
        queued = ", ".join(f"{lr:g}" for lr in outside)
        lines.append(f"  the study's queued trials with lr {queued} are outside it: the run above queues none")
    return lines


def draw(test, path: Path, title: str) -> Path:
    """The smoothed loss against the rate (log scale), the suggested range shaded."""
    figure = new_figure(6.4, 4.0)
    ax = figure.add_subplot()
    ax.plot(test.rates, test.raw, color="#4c72b0", alpha=0.3, linewidth=0.8, label="loss")
    ax.plot(test.rates, test.losses, color="#4c72b0", label="smoothed")
    ax.axvspan(test.low, test.high, color="#55a868", alpha=0.25, label=f"suggested: {test.low:.1e} to {test.high:.1e}")
    if test.diverged_at:
        ax.axvline(test.diverged_at, color="#c44e52", linestyle="--", label=f"diverged at {test.diverged_at:.1e}")
    ax.set_xscale("log")
    # the diverging tail shown rising, not filling the plot: up to 1.6 times the loss at the start
    ax.set_ylim(0.9 * min(test.losses), 1.6 * max(test.losses[0], min(test.losses)))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    figure.savefig(path)
    return path
