"""A study in lines, as ``search status`` prints it: what it trains, its trials by state, the running
and failed ones, the best so far, the top trials and what mattered."""

from __future__ import annotations

import warnings
from collections.abc import Sequence, Set
from datetime import datetime

import optuna
from optuna.trial import TrialState

from search import lr_find
from search.formats import duration, short
from search.noise import near_the_best
from search.ranking import ranked
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
    counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    attrs = study.user_attrs
    label = shown_as(objective(attrs))
    facts = data_facts(attrs)  # shown in full below, else in short in the first line
    setup = setup_text(attrs.get(SPEC_ATTR), None if facts else data_summary(attrs))
    lines = [f"study {study.study_name}: {len(trials)} trials" + (f" of {setup}" if setup else "")]
    lines += [f"  {line}" for line in facts.lines()] if facts else []
    lines += [line] if (line := lr_find.status_line(attrs)) else []
    lines.append("  " + ", ".join(f"{name.lower()} {n}" for name, n in counts.items() if n))
    lines += _running(trials, stale, label) + _failures(trials)
    complete = ranked(trials)
    if not complete:
        lines.append("  no complete trial yet")
        return "\n".join(lines)
    best = complete[0]
    spread = TrialRecord.of(best).spread()
    lines.append(f"  best: trial {best.number}, {label} {best.value:.4f}" + (f" ({spread})" if spread else ""))
    lines += _collapsed(complete, facts.class_names if facts else None)
    lines += [f"  {line}" for line in near_the_best(complete, facts if objective(attrs) == "macro_f1" else None)]
    names = sorted({k for t in complete[:top] for k in t.params})
    widths = {n: max(8, len(n), *(len(short(t.params.get(n))) for t in complete[:top])) for n in names}
    width = max(8, len(label))
    columns = " ".join(f"{n:>{widths[n]}}" for n in names)
    folded = any(TrialRecord.of(t).fold_values for t in complete[:top])  # cross-validated: each one's fold sd
    sd = f" {'fold sd':>7}" if folded else ""
    lines += ["", f"  {'trial':>5} {label:>{width}}{sd} {'acc':>6} {'epochs':>6}  {columns}"]
    for t in complete[:top]:
        cells = " ".join(f"{short(t.params.get(n)):>{widths[n]}}" for n in names)
        kept = TrialRecord.of(t)
        acc, epochs = kept.accuracy, "-" if kept.epochs_run is None else kept.epochs_run
        shown = "-" if acc is None else format(acc, ".3f")
        sd_text = "-" if (fold_sd := kept.fold_sd()) is None else f"{fold_sd:.3f}"
        spread = f" {sd_text:>7}" if folded else ""
        lines.append(f"  {t.number:>5} {t.value:>{width}.4f}{spread} {shown:>6} {epochs:>6}  {cells}")
    mattered = importance(study, label)
    if isinstance(mattered, str):
        lines += ["", f"  parameter importance: {mattered}"]
    else:
        lines += ["", "  parameter importance (PED-ANOVA, as in the dashboard):"]
        lines += [f"  {name:>20} {value:.3f}" for name, value in mattered.items()]
    return "\n".join(lines)


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
