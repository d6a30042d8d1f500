"""Warm starts: the best complete trials of another study, their params put onto this study's
space, as this study's first trials. A param this space lacks is dropped, a number outside its
range is clipped into it, and a choice it does not offer is dropped (the sampler picks it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from search.study.space import SearchSpace


@dataclass(frozen=True)
class Mapped:
    """One trial's params as this space takes them, and what changed on the way."""

    number: int  # the trial's number in the other study
    params: dict[str, Any]
    changes: tuple[str, ...]


def map_params(number: int, params: Mapping[str, Any], space: SearchSpace) -> Mapped:
    """``params`` of another study's trial as ``space`` takes them. Choices first, in the space's
    order of sampling, so a branch's own fields are looked up under the branch that stays."""
    kept: dict[str, Any] = {}
    changes: list[str] = []
    order = [p.name for p in space.every_param()]
    for name in sorted(params, key=lambda n: order.index(n) if n in order else len(order)):
        value = params[name]
        dist = space.distribution(name, kept)
        if dist is None:
            changes.append(f"{name} dropped (not searched here)")
        elif dist.choices is not None:
            if value in dist.choices:
                kept[name] = value
            else:
                changes.append(f"{name}={value!r} dropped (not one of {dist.choices})")
        elif not isinstance(value, int | float) or isinstance(value, bool):
            changes.append(f"{name}={value!r} dropped (not a number)")
        else:
            fitted = _fit(value, dist)
            if fitted != value:
                changes.append(f"{name} {value:g} clipped to {fitted:g}")
            kept[name] = fitted
    return Mapped(number, kept, tuple(changes))


def _fit(value: float, dist) -> float:
    """``value`` inside ``dist``'s range, on its grid where it has a step."""
    fitted = min(max(value, dist.low), dist.high)
    if dist.step is not None:
        fitted = min(dist.low + round((fitted - dist.low) / dist.step) * dist.step, dist.high)
    return int(round(fitted)) if dist.integer else fitted


def describe(source: str, mapped: list[Mapped]) -> str:
    """One line: which trials were queued, and what changed in each."""
    numbers = ", ".join(str(m.number) for m in mapped)
    changed = "; ".join(f"trial {m.number}: {', '.join(m.changes)}" for m in mapped if m.changes)
    return f"warm start: queued trials {numbers} of study '{source}' first" + (f" ({changed})" if changed else "")
