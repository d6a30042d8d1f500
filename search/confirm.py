"""Leaders trained again before they are handed over: each of a study's leading configurations
queued again with further seeds, as confirmation runs. Any running or later worker takes them; the
budget does not count them (``search.store.budget``); the study then ranks a configuration by the
mean over its runs (``search.ranking``).

A run's seed sets its weights' start, its augmentation and its data's split: a single-split study's
confirmation validates on another split, a cross-validated one's on other folds (repeated
cross-validation). Seeds are the trial's own plus 1, 2, ... so that asking twice queues nothing twice."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from search.ranking import configurations
from search.record import TrialRecord
from search.store import CONFIRMS


@dataclass(frozen=True)
class Queued:
    """The confirmation runs queued for one leading configuration."""

    trial: int  # the trial of the search whose configuration they train again
    seeds: tuple[int, ...]
    runs: int  # its complete runs so far, its own included


def queue_confirmations(study: optuna.Study, top: int, seeds: int) -> list[Queued]:
    """The ``top`` leading configurations, each queued again until it has ``seeds`` confirmation runs
    (queued, running or finished; a killed one is queued again by the worker that finds it, one that
    failed in training is not run again); what was queued. Run under the study's budget lock, so that
    two callers queue each run once."""
    trials = study.get_trials(deepcopy=False)
    taken: dict[int, set[int]] = defaultdict(set)
    for t in trials:
        if isinstance(marker := t.system_attrs.get(CONFIRMS), dict):
            taken[marker["trial"]].add(marker["seed"])
    queued = []
    for leader in configurations(trials)[:top]:
        own = TrialRecord.of(leader.trial).seed or 0
        missing = [own + i for i in range(1, seeds + 1) if own + i not in taken[leader.trial.number]]
        for seed in missing:
            attrs = {CONFIRMS: {"trial": leader.trial.number, "seed": seed}, "fixed_params": leader.trial.params}
            study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=attrs))
        if missing:
            queued.append(Queued(leader.trial.number, tuple(missing), len(leader.runs)))
    return queued


def described(queued: list[Queued]) -> str:
    """'trial 3 with seeds 1, 2; trial 7 with seed 1'."""
    return "; ".join(
        f"trial {q.trial} with seed{'s' if len(q.seeds) > 1 else ''} {', '.join(map(str, q.seeds))}" for q in queued
    )
