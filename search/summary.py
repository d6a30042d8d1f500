"""A study in lines, as ``search status`` prints it: what it trains, its trials by state, the running
and failed ones, the best so far, the top trials and what mattered."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence, Set
from datetime import datetime

import optuna
from optuna.trial import TrialState

from search import lr_find
from search.formats import duration, short
from search.noise import near_the_best
from search.ranking import Runs, configurations, confirms
from search.record import TrialRecord, collapse_text, failures_by_reason, shown_as
from search.study.inputs import data_facts, data_summary
from search.study.recorded import SPEC_ATTR, objective, setup_text

MIN_TRIALS_FOR_IMPORTANCE = 4


def importance(study: optuna.Study, label: str) -> dict[str, float] | str:
    """Parameter importance by PED-ANOVA (how far the best tenth of the trials' values of a parameter
    differ from all of them), as optuna-dashboard ranks them; or why it is not shown: too few
    complete trials, or values that do not differ (equal bars would read as a finding). Named
    rather than left to Optuna's default, which was fANOVA before Optuna 5.

    Only the parameters every complete trial has are ranked (lr, scheduler, loss, accumulation):
    a scheduler's or a loss's own option exists in a few trials only, and ranking it beside them
    would read noise from a handful of trials as importance.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return f"shown from {MIN_TRIALS_FOR_IMPORTANCE} complete trials ({len(complete)} so far)"
    values = {round(t.value, 6) for t in complete}
    if len(values) == 1:
        return f"not shown: every complete trial scored the same {label}, {complete[0].value:.4f}"
    shared = sorted(set.intersection(*(set(t.params) for t in complete)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            found = optuna.importance.get_param_importances(study, params=shared, evaluator=evaluator)
        except (ValueError, RuntimeError) as error:  # e.g. a single distinct value of every parameter
            return f"not shown: {error}"
    if not found or (len(found) > 1 and len(set(found.values())) == 1):
        return "not shown: the parameters' values do not tell the trials apart yet"
    return found


def status_text(study: optuna.Study, *, top: int = 10, stale: Set[int] = frozenset()) -> str:
    """What ``search status`` prints; ``stale``: running trials whose worker stopped sending heartbeats."""
    trials = study.get_trials(deepcopy=False)
    attrs = study.user_attrs
    label = shown_as(objective(attrs))
    facts = data_facts(attrs)  # shown in full below, else in short in the first line
    setup = setup_text(attrs.get(SPEC_ATTR), None if facts else data_summary(attrs))
    lines = [f"study {study.study_name}: {len(trials)} trials" + (f" of {setup}" if setup else "")]
    lines += [f"  {line}" for line in facts.lines()] if facts else []
    lines += [line] if (line := lr_find.status_line(attrs)) else []
    lines.append("  " + _by_state(trials))
    lines += _running(trials, stale, label) + _failures(trials)
    leaders = configurations(trials)
    if not leaders:
        lines.append("  no complete trial yet")
        return "\n".join(lines)
    best = leaders[0]
    spread = best.spread() or TrialRecord.of(best.trial).spread()
    lines.append(f"  best: trial {best.trial.number}, {label} {best.mean:.4f}" + (f" ({spread})" if spread else ""))
    lines += _collapsed([r.trial for r in leaders], facts.class_names if facts else None)
    lines += [f"  {line}" for line in near_the_best(leaders, facts if objective(attrs) == "macro_f1" else None)]
    lines += ["", *_table(leaders[:top], label)]
    mattered = importance(study, label)
    if isinstance(mattered, str):
        lines += ["", f"  parameter importance: {mattered}"]
    else:
        lines += ["", "  parameter importance (PED-ANOVA, as in the dashboard):"]
        lines += [f"  {name:>20} {value:.3f}" for name, value in mattered.items()]
    return "\n".join(lines)


def _by_state(trials: list[optuna.trial.FrozenTrial]) -> str:
    """'complete 12, pruned 3', then the confirmation runs apart: the budget does not count them."""
    search = Counter(t.state.name for t in trials if confirms(t) is None)
    again = Counter(t.state.name for t in trials if confirms(t) is not None)
    text = ", ".join(f"{state.name.lower()} {search[state.name]}" for state in TrialState if search[state.name])
    if again:
        runs = ", ".join(f"{state.name.lower()} {again[state.name]}" for state in TrialState if again[state.name])
        text += f"; confirmation runs, outside the budget: {runs}"
    return text


def _table(leaders: list[Runs], label: str) -> list[str]:
    """The leading configurations, one row each: the objective (a confirmed one's mean), its spread
    (over its runs, or its folds), accuracy, epochs and every parameter."""
    names = sorted({k for r in leaders for k in r.trial.params})
    widths = {n: max(8, len(n), *(len(short(r.trial.params.get(n))) for r in leaders)) for n in names}
    width = max(8, len(label))
    columns = " ".join(f"{n:>{widths[n]}}" for n in names)
    confirmed = any(r.sd is not None for r in leaders)  # confirmed: its runs and their sd
    folded = any(TrialRecord.of(r.trial).fold_values for r in leaders)  # cross-validated: each one's fold sd
    head = (f" {'runs':>4} {'runs sd':>7}" if confirmed else "") + (f" {'fold sd':>7}" if folded else "")
    lines = [f"  {'trial':>5} {label:>{width}}{head} {'acc':>6} {'epochs':>6}  {columns}"]
    for r in leaders:
        kept = TrialRecord.of(r.trial)
        cells = " ".join(f"{short(r.trial.params.get(n)):>{widths[n]}}" for n in names)
        acc, epochs = kept.accuracy, "-" if kept.epochs_run is None else kept.epochs_run
        shown = "-" if acc is None else format(acc, ".3f")
        spread = f" {len(r.runs):>4} {'-' if r.sd is None else format(r.sd, '.3f'):>7}" if confirmed else ""
        spread += f" {'-' if (sd := kept.fold_sd()) is None else format(sd, '.3f'):>7}" if folded else ""
        lines.append(f"  {r.trial.number:>5} {r.mean:>{width}.4f}{spread} {shown:>6} {epochs:>6}  {cells}")
    return lines


def _running(trials: list[optuna.trial.FrozenTrial], stale: Set[int], label: str) -> list[str]:
    """One line per running trial: where it runs, how far it got and since when, and whether its
    worker still sends heartbeats."""
    lines = []
    now = datetime.now()
    for t in (t for t in trials if t.state == TrialState.RUNNING):
        kept = TrialRecord.of(t)
        epochs = kept.trained_epochs() or "?"
        done = len(t.intermediate_values)
        latest = f", {label} {t.intermediate_values[max(t.intermediate_values)]:.4f}" if done else ""
        since = duration((now - t.datetime_start).total_seconds()) if t.datetime_start else "?"
        worker = kept.worker or "a worker"
        lines.append(f"  running: trial {t.number} on {worker}, {done}/{epochs} epochs{latest}, for {since}")
        if t.number in stale:
            lines[-1] += (
                "; no heartbeat for longer than the grace period: its worker is gone, and the next trial "
                "to start fails it and queues its params again"
            )
    return lines


def _collapsed(complete: list[optuna.trial.FrozenTrial], class_names: Sequence[str] | None) -> list[str]:
    """A line for each complete trial whose model predicts one class for almost every image (the five best)."""
    flagged = [(t.number, found) for t in complete if (found := TrialRecord.of(t).collapse())]
    lines = [f"  trial {number} {collapse_text(found, class_names)}" for number, found in flagged[:5]]
    if len(flagged) > 5:
        lines.append(f"  and {len(flagged) - 5} more of the {len(complete)} complete trials learned nothing")
    if flagged and len(flagged) == len(complete):
        lines.append("  no complete trial learned: train more epochs, or search higher learning rates")
    return lines


def _failures(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    lines = []
    for reason, numbers in failures_by_reason(trials):
        shown = ", ".join(map(str, numbers[:8])) + (", ..." if len(numbers) > 8 else "")
        clipped = reason if len(reason) <= 160 else reason[:157] + "..."
        lines.append(f"  failed: {len(numbers)} x {clipped} (trial{'s' if len(numbers) > 1 else ''} {shown})")
    return lines
