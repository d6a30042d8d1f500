"""The one ranking of a study's complete trials that every command uses: by configuration, each
scored by the mean of its runs (its trial of the search and the confirmation runs that trained it
again with other seeds), the best first."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.store import CONFIRMS
from training import SearchServiceError


def confirms(trial: FrozenTrial) -> int | None:
    """The number of the trial whose configuration ``trial`` trains again, or None for a trial of the search."""
    marker = trial.system_attrs.get(CONFIRMS)
    return marker["trial"] if isinstance(marker, dict) else None


@dataclass(frozen=True)
class Runs:
    """A configuration's complete runs: its trial of the search first, then its confirmation runs."""

    trial: FrozenTrial
    runs: tuple[FrozenTrial, ...]

    @property
    def values(self) -> list[float]:
        return [t.value for t in self.runs]

    @property
    def mean(self) -> float:
        """What the study ranks it by: its trial's value, or the mean over its runs once confirmed."""
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if len(self.runs) > 1 else None

    def spread(self) -> str | None:
        """Confirmed: 'mean of 3 runs, trials 3, 12 and 13: 0.701-0.725, sd 0.012'; else None."""
        if self.sd is None:
            return None
        numbers = ", ".join(str(t.number) for t in self.runs[:-1]) + f" and {self.runs[-1].number}"
        low, high = min(self.values), max(self.values)
        return f"mean of {len(self.runs)} runs, trials {numbers}: {low:.3f}-{high:.3f}, sd {self.sd:.3f}"

    def as_json(self) -> dict[str, object]:
        """Its runs, for ``search best``: their trials, values, mean and sd."""
        return {"trials": [t.number for t in self.runs], "values": self.values, "mean": self.mean, "sd": self.sd}


def configurations(trials: Iterable[FrozenTrial]) -> list[Runs]:
    """The complete trials of the search, each with its complete confirmation runs, the best mean
    first; of equal ones, the earlier first."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    again: dict[int, list[FrozenTrial]] = defaultdict(list)
    for t in complete:
        if (original := confirms(t)) is not None:
            again[original].append(t)
    found = [Runs(t, (t, *again[t.number])) for t in complete if confirms(t) is None]
    return sorted(found, key=lambda r: r.mean, reverse=True)


def configuration_of(trials: Iterable[FrozenTrial], trial: FrozenTrial) -> Runs | None:
    """The configuration ``trial`` is the trial of the search of, with its runs; None for another
    trial (a confirmation run, one not complete)."""
    return next((r for r in configurations(trials) if r.trial.number == trial.number), None)


def ranked(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The complete trials of the search, ranked as ``configurations`` ranks them."""
    return [r.trial for r in configurations(trials)]


def best(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """The best complete trial (``ranked``'s first), or None before one completed."""
    top = ranked(trials)
    return top[0] if top else None


def chosen(study: optuna.Study, number: int | None) -> FrozenTrial:
    """The trial a command acts on: trial ``number``, or the best; one line where there is none."""
    trials = study.get_trials(deepcopy=False)
    if number is not None:
        found = next((t for t in trials if t.number == number), None)
        if found is not None:
            return found
        last = max((t.number for t in trials), default=None)
        span = f"trials are numbered 0..{last}" if last is not None else "it has no trials"
        raise SearchServiceError(f"study '{study.study_name}' has no trial {number}; {span}")
    top = best(trials)
    if top is None:
        raise SearchServiceError(
            f"study '{study.study_name}' has no complete trial yet; run it on (search status shows it)"
        )
    return top
