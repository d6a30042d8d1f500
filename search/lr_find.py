"""A study's lr-find (``training.lr_find``, Smith's learning-rate range test), and every rule of the
range it finds, in one place:

- the test runs on the study's own settings, between bounds far outside its space (``bounds``,
  ``find``), where the study file asks for it (``lr: {lr_find: true}``) or ``search lr-find`` does;
- one worker of a study tests, under the study's lock, while the others wait for its range; that
  range is recorded on the study, and every run and worker searches it (``test_once``,
  ``searching_recorded``); ``search run --workers N`` leaves the test to its workers;
- the study's queued known-good rates outside that range move into it, as one (``moved_inside``);
- what it found is said as a line, as the space's ``lr`` entry to use, and as a plot (``summary``,
  ``draw``), and ``search status`` says the range searched (``status_line``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.store.budget import TrialGate
from search.study.schema import StudySpec
from training import ConfigError

if TYPE_CHECKING:  # torch and Optuna: not for the commands that only read a study
    import optuna

    from training import LrFindResult

RECORD_ATTR = "lr_range"  # the study user attribute the range is recorded in, with the test's cost


def bounds(spec: StudySpec) -> tuple[float, float]:
    """Where the test starts and ends: 100 times below and above the study's lr range, or its one
    fixed lr where the space does not search it."""
    from training import default_bounds

    searched = spec.space.distribution("lr", {})
    if searched is not None and searched.low is not None and searched.high is not None:
        return default_bounds(searched.low, searched.high)
    if searched is not None:
        raise ConfigError(f"study '{spec.name}': space.lr is a list of choices; lr_find needs {{low, high}}")
    return default_bounds(spec.train.optimizer.lr, spec.train.optimizer.lr)


def find(spec: StudySpec, steps: int | None = None) -> LrFindResult:
    """The test on the study's model, data, loss and optimizer at the study's first settings. Where
    the loss never diverged, the lowest loss may lie past the test's end: the range then ends no
    higher than the space's own bound (100 times below the test's end)."""
    from training import lr_find

    start, end = bounds(spec)
    test = lr_find(spec.trial_config({}, None), start, end, steps)
    low, high = test.low, test.high
    if test.diverged_at is None and high > end / 100:
        high = end / 100
        low = min(low, high / 10)
    # to three figures, as printed: the range a user reads is the one searched
    return dataclasses.replace(test, low=float(f"{low:.2e}"), high=float(f"{high:.2e}"))


def find_for_study(spec: StudySpec, say: Callable[[str], None]) -> dict[str, Any]:
    """The test a study file asks for, run by a worker that finds the study without a recorded
    range: the range as the study records it."""
    say(f"lr-find: a learning-rate range test for study '{spec.name}' before its first trial")
    test = find(spec)
    say(f"lr-find: searching lr from {test.low:.2e} to {test.high:.2e} ({test.steps} steps, {test.seconds:.0f} s)")
    return {"low": test.low, "high": test.high, "steps": test.steps, "seconds": round(test.seconds, 1),
            "diverged_at": test.diverged_at}  # fmt: skip


def recorded(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The range a study recorded (its user attributes ``attrs``), or None."""
    found = attrs.get(RECORD_ATTR)
    return found if isinstance(found, dict) else None


def searching_recorded(spec: StudySpec, attrs: Mapping[str, Any]) -> StudySpec:
    """The spec searching the range its study recorded, where the file asks for lr_find and the
    study has a range: every run and worker searches that one range."""
    found = recorded(attrs)
    if spec.space.lr_to_find() is None or found is None:
        return spec
    return spec.model_copy(update={"space": spec.space.with_found_lr(found["low"], found["high"])})


_TESTED: dict[str, dict[str, Any]] = {}  # this process's tests, by the study file they ran for


def test_once(spec: StudySpec, study: optuna.Study, storage_url: str, say: Callable[[str], None]) -> StudySpec:
    """The spec searching the study's recorded range, where the file asks for lr_find. Where the study
    has none, this worker tests and records it, under the study's lock: the study's other workers
    wait for that range rather than test too. A lock cut while it tested (PgBouncer's
    ``idle_transaction_timeout``) is taken again before the range is recorded: the first recorded
    wins. A test this process ran already (before the storage went away, say) is not run again."""
    if spec.space.lr_to_find() is None:
        return spec
    gate = TrialGate(storage_url, spec.name)
    try:
        gate.acquire()
        if recorded(study.user_attrs) is None:
            key = spec.model_dump_json()
            if key not in _TESTED:
                _TESTED[key] = find_for_study(spec, say)
            if not gate.still_held():
                gate.release()
                gate.acquire()
            if recorded(study.user_attrs) is None:
                study.set_user_attr(RECORD_ATTR, _TESTED[key])
    finally:
        gate.close()
    return searching_recorded(spec, study.user_attrs)


def record_first(spec: StudySpec, study: optuna.Study, storage_url: str, found: dict[str, Any]) -> StudySpec:
    """``found`` recorded on the study unless a range is there already: the first recorded wins,
    looked for and written under the study's lock, so that two workers that tested at once search
    the same range. The spec searching the recorded one."""
    with TrialGate.held(storage_url, spec.name):
        if recorded(study.user_attrs) is None:
            study.set_user_attr(RECORD_ATTR, found)
    return searching_recorded(spec, study.user_attrs)


def moved_inside(lrs: list[float], low: float, high: float) -> dict[float, float]:
    """Where queued rates outside the range ``low``..``high`` train instead, as {rate: moved}: all
    multiplied by one factor that puts their centre (on a log scale) at the range's middle, then
    clipped to it, to three figures. Rates inside stay: the test does not rule them out. Moved as
    one, those outside keep their ratios where the range is wider than their spread: two guesses
    stay two, and one alone lands on the middle. The edges are where the loss falls fastest and where
    it stops falling."""
    outside = list(dict.fromkeys(lr for lr in lrs if not low <= lr <= high))  # in the study file's order
    if not outside:
        return {}
    centre = math.exp(sum(math.log(lr) for lr in outside) / len(outside))
    factor = math.sqrt(low * high) / centre
    return {lr: float(f"{min(high, max(low, lr * factor)):.3g}") for lr in outside}


def queued_moves(spec: StudySpec) -> dict[float, float]:
    """The known-good sets' lr outside the range searched (``moved_inside``). A study file's own
    range refuses a set outside it when loaded, so this moves only where the range is lr_find's:
    every trial searches inside the range, and two sets that become one are queued once."""
    searched = spec.space.distribution("lr", {})  # lr_find's range is the top-level lr's, in no branch
    if searched is None or searched.low is None or searched.high is None:
        return {}
    return moved_inside([q["lr"] for q in spec.enqueue if "lr" in q], searched.low, searched.high)


def describe_moved(moved: dict[float, float], low: float, high: float) -> str:
    """The run's words for ``moved_inside``: the range, each queued rate and where it trains."""
    pairs = ", ".join(f"{lr:g} -> {to:g}" for lr, to in moved.items())
    clipped = "; those past its edges clipped to them" if {low, high} & set(moved.values()) else ""
    recorded_range = f"the range recorded, {low:.2e} to {high:.2e}"
    return f"queued lr outside {recorded_range}, moved as one around its middle: {pairs}{clipped}"


def queued_outside(spec: StudySpec, test: LrFindResult) -> list[float]:
    """The lr of the study's queued trials that lie outside the range the test found."""
    return [q["lr"] for q in spec.enqueue if "lr" in q and not test.low <= q["lr"] <= test.high]


def space_entry(test: LrFindResult) -> str:
    """The space's ``lr`` entry that searches the range found, as a study file writes it."""
    return f"{{low: {test.low:.2e}, high: {test.high:.2e}, log: true}}"


def summary(spec: StudySpec, test: LrFindResult) -> list[str]:
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


def status_line(attrs: Mapping[str, Any]) -> str | None:
    """``search status``'s line on the range a study searches, where lr-find found it."""
    found = recorded(attrs)
    return f"  lr searched from {found['low']:.2e} to {found['high']:.2e}, found by lr-find" if found else None


def draw(test: LrFindResult, path: Path, title: str) -> Path:
    """The smoothed loss against the rate (log scale), the suggested range shaded."""
    from search.pictures import new_figure  # matplotlib: for the plot only

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
