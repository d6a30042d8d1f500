"""The study as a sampler or pruner reads it: its finished trials, read once per trial.

Optuna's samplers and pruners read the whole study each time they are asked, and its storage
reads every trial whole, running ones too: with a thousand workers, a thousand running trials at
every parameter and every epoch of every trial. ``PerTrial`` reads the finished trials once for a
trial (``finished_trials``, which fetches only the trials this worker has not seen)
and ``FinishedView`` answers the reads of finished trials from that list. A trial is sampled and
pruned against the trials finished when it started, as Optuna's own sampler cache does.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Container
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.store._internals import FINISHED
from search.store._trials import finished_trials


class FinishedView:
    """``study``, except that its reads of finished trials answer from ``finished``; a read that
    asks for running or waiting trials goes to the study itself, and so does every trial but
    from a sampler (``_get_trials``)."""

    def __init__(self, study: optuna.Study, finished: list[FrozenTrial]) -> None:
        self._study, self._finished = study, finished

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        if states is None or not set(states) <= set(FINISHED):
            return self._study.get_trials(deepcopy=deepcopy, states=states)
        trials = [t for t in self._finished if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def _get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        """What Optuna's samplers call (``use_cache``: the study's cache of one ``ask``; a read that
        goes to the study here is read afresh). Every trial (``states=None``) is what a sampler's
        search space reads: the intersection of the finished trials' distributions, where an
        unfinished trial only marks the number to look again from. So it gets the finished trials
        and, for each number between them that has not finished, a running trial without params
        (Optuna numbers a study's trials 0, 1, 2, ...): this read reads no running trial whole.
        (TPE's constant liar, on by default, still reads the running trials for each trial.)"""
        if states is not None:
            return self.get_trials(deepcopy=deepcopy, states=states)
        finished = self.get_trials(deepcopy=deepcopy, states=FINISHED)
        numbers = {t.number for t in finished}
        gaps = [_unfinished(n) for n in range(max(numbers, default=-1)) if n not in numbers]
        return sorted(finished + gaps, key=lambda t: t.number)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


def _unfinished(number: int) -> FrozenTrial:
    """A trial that had not finished when the finished ones were read: its number only."""
    return FrozenTrial(number, TrialState.RUNNING, None, None, None, {}, {}, {}, {}, {}, -1)


class PerTrial:
    """The finished trials, read at a trial's first question and kept for its later ones; read
    again while fewer than ``needs`` are complete (a pruner's start-up trials), so that the first
    trials of a study are pruned as soon as the pruner may."""

    def __init__(self, needs: int = 0) -> None:
        self.needs = needs
        self._lock = threading.Lock()
        self._key: tuple[str, int] | None = None
        self._trials: list[FrozenTrial] = []

    def view(self, study: optuna.Study, trial_number: int) -> FinishedView:
        key = (study.study_name, trial_number)
        with self._lock:
            if key != self._key or self._complete() < self.needs:
                self._key, self._trials = key, finished_trials(study)
            return FinishedView(study, self._trials)

    def _complete(self) -> int:
        return sum(t.state == TrialState.COMPLETE for t in self._trials)
