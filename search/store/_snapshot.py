"""The study as a worker's sampler, pruner and step after a trial read it: one read of the
finished trials for each trial.

Optuna's samplers and pruners read the whole study each time they are asked, and its storage
reads every trial whole, running ones too: with a thousand workers, a thousand running trials at
every parameter and every epoch of every trial. ``Reads`` keeps one read of the finished trials
for each of a worker's trials (``finished_trials``, which fetches only the trials this worker has
not seen, lean), and ``FinishedView`` answers the sampler's and pruner's reads from it; TPE's
constant liar gets the running trials, read lean once for the trial. A trial is sampled and pruned
against the trials finished when it started, as Optuna's own sampler cache does.
"""

from __future__ import annotations

import copy
import threading
import time
import weakref
from collections.abc import Container
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.store._internals import FINISHED, storage_of
from search.store._trials import finished_trials, running_trials


class FinishedView:
    """``study``, except that its reads of finished trials answer from ``read``, and so do those of
    finished and running trials together (TPE's constant liar), with the running trials read lean
    once for the view's trial; any other read goes to the study itself, and so does every trial but
    from a sampler (``_get_trials``)."""

    def __init__(self, study: optuna.Study, read: Read) -> None:
        self._study, self._read = study, read

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        wanted = set(states) if states is not None else None
        if wanted is None or not wanted <= {*FINISHED, TrialState.RUNNING}:
            return self._study.get_trials(deepcopy=deepcopy, states=states)
        trials = [t for t in self._read.finished if t.state in wanted]
        if TrialState.RUNNING in wanted:
            trials = sorted(trials + self._read.running(self._study), key=lambda t: t.number)
        return copy.deepcopy(trials) if deepcopy else trials

    def _get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        """What Optuna's samplers call (``use_cache``: the study's cache of one ``ask``; a read that
        goes to the study here is read afresh). Every trial (``states=None``) is what a sampler's
        search space reads: the intersection of the finished trials' distributions, where an
        unfinished trial only marks the number to look again from. So it gets the finished trials
        and, for each number between them that has not finished, a running trial without params
        (Optuna numbers a study's trials 0, 1, 2, ...): this read reads no running trial whole."""
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


class Read:
    """The finished trials as one read found them, and the running trials, read lean at the first
    question that needs them (TPE's constant liar) and kept for the trial's later ones."""

    def __init__(self, finished: list[FrozenTrial], for_trial: int | None) -> None:
        self.finished, self.for_trial, self.at = finished, for_trial, time.monotonic()
        self.complete = sum(t.state == TrialState.COMPLETE for t in finished)  # counted once, not per question
        self._running: list[FrozenTrial] | None = None

    def running(self, study: optuna.Study) -> list[FrozenTrial]:
        if self._running is None:
            self._running = running_trials(study)
        return self._running


class Reads:
    """A worker's one read of the finished trials for each trial, shared by that trial's sampler,
    its pruner and the worker's step after the trial (retention, the progress line): per storage
    client (a worker's) and study. The read the step after a trial made (``after_trial``) is the
    next trial's, where that trial starts within ``FRESH_SECONDS``; else, and while fewer trials
    than a pruner ``needs`` are complete (its start-up trials), a question reads again."""

    FRESH_SECONDS = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()  # for the map; each worker's read has a lock of its own
        self._slots: weakref.WeakKeyDictionary[Any, dict[str, _Slot]] = weakref.WeakKeyDictionary()

    def view(self, study: optuna.Study, trial_number: int, needs: int = 0) -> FinishedView:
        slot = self._slot(study)
        with slot.lock:
            kept = slot.read
            unclaimed = kept is not None and kept.for_trial is None and time.monotonic() - kept.at < self.FRESH_SECONDS
            if kept is None or not (kept.for_trial == trial_number or unclaimed) or kept.complete < needs:
                kept = slot.read = Read(finished_trials(study), trial_number)
            kept.for_trial = trial_number
            return FinishedView(study, kept)

    def after_trial(self, study: optuna.Study) -> list[FrozenTrial]:
        """The finished trials now, the worker's own last trial among them; kept for its next trial."""
        slot = self._slot(study)
        with slot.lock:
            slot.read = Read(finished_trials(study), None)
            return slot.read.finished

    def _slot(self, study: optuna.Study) -> _Slot:
        with self._lock:
            return self._slots.setdefault(storage_of(study) or study, {}).setdefault(study.study_name, _Slot())


class _Slot:
    """One worker's latest read of one study."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.read: Read | None = None


READS = Reads()  # this process's


def finished_after_trial(study: optuna.Study) -> list[FrozenTrial]:
    """The study's finished trials, read once a trial is told; the worker's next trial starts from
    this read (``Reads``)."""
    return READS.after_trial(study)


class PerTrial:
    """A sampler's or pruner's handle on the worker's one read per trial (``Reads``): ``needs``, the
    complete trials below which each question reads again (a pruner's start-up trials), so that the
    first trials of a study are pruned as soon as the pruner may."""

    def __init__(self, needs: int = 0) -> None:
        self.needs = needs

    def view(self, study: optuna.Study, trial_number: int) -> FinishedView:
        return READS.view(study, trial_number, self.needs)
