"""The report's sections as HTML: the data's facts, the best trial in the competition's terms, and
the trials (the best ten, and how each one ended)."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState

from search.formats import duration, four, short
from search.noise import near_the_best
from search.ranking import Runs, configurations, confirms
from search.record import TrialRecord, collapse_text, failures_by_reason
from search.report.parts import confused_parts, is_competition, part_scores
from training import DataFacts


def data_facts(facts: DataFacts) -> str:
    """The facts as a list: images, classes, people and the split, each class's validation images,
    and what was left out."""
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in facts.lines()) + "</ul>"


def best_trial(top: FrozenTrial, class_names: Sequence[str], label: str) -> str:
    """The best trial's scores: a warning where it learned nothing; for the competition's 18
    classes, each part's macro-F1 and the confusions in the parts' terms."""
    kept = TrialRecord.of(top)
    if kept.fold_values is not None:
        lines = [f"<p>Best: trial {top.number}, out-of-fold {html.escape(label)} {top.value:.4f} "
                 f"(accuracy {four(kept.accuracy)}) over {len(kept.fold_values)} folds{_spread(kept)}, each "
                 "fold's last epoch.</p>"]  # fmt: skip
    else:
        lines = [
            f"<p>Best: trial {top.number}, validation {html.escape(label)} {top.value:.4f} "
            f"(accuracy {four(kept.accuracy)}), "
            f"at epoch {kept.best_epoch if kept.best_epoch is not None else '?'} (counted from 0).</p>"
        ]
    if collapse := kept.collapse():
        lines.append(f"<p class='warn'>This model {html.escape(collapse_text(collapse, class_names))}.</p>")
    if kept.confusion_matrix and is_competition(class_names):
        scores = part_scores(kept.confusion_matrix)
        cells = "".join(f"<td>{four(value)}</td>" for value in scores.values())
        heads = "".join(f"<th>{part}</th>" for part in scores)
        lines.append(f"<h3>Each part of the label</h3><table><tr><th>macro-F1 of</th>{heads}</tr>"
                     f"<tr><td>best trial</td>{cells}</tr></table>")  # fmt: skip
        confused = confused_parts(kept.confusion_matrix, class_names)
        lines.append("<ul>" + "".join(f"<li>{html.escape(text)}</li>" for text in confused) + "</ul>")
    return "\n".join(lines)


def _spread(kept: TrialRecord) -> str:
    return f" ({spread})" if (spread := kept.spread()) else ""


def top_trials(trials: list[FrozenTrial], label: str) -> str:
    """The ten leading configurations as a table: the objective (a confirmed one's mean over its
    runs, with their spread), metrics, epochs and every parameter."""
    leaders = configurations(trials)[:10]
    params = sorted({k for r in leaders for k in r.trial.params})
    confirmed = any(r.sd is not None for r in leaders)
    folded = any(TrialRecord.of(r.trial).fold_values for r in leaders)  # cross-validated: each one's spread
    spread = (["runs", "runs (min-max)", "runs sd"] if confirmed else []) + (
        ["folds (min-max)", "fold sd"] if folded else []
    )
    head = "".join(f"<th>{html.escape(p)}</th>" for p in ["trial", label, *spread, "accuracy", "epochs", *params])
    rows = []
    for r in leaders:
        kept = TrialRecord.of(r.trial)
        epochs = "" if kept.epochs_run is None else kept.epochs_run
        runs = [len(r.runs), *_range_and_sd(r.values if r.sd is not None else [], r.sd)] if confirmed else []
        folds = _range_and_sd([v for v in kept.fold_values or () if v is not None], kept.fold_sd()) if folded else []
        cells = [r.trial.number, f"{r.mean:.4f}", *runs, *folds, four(kept.accuracy), epochs,
                 *(short(r.trial.params.get(p, "")) for p in params)]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _range_and_sd(values: list[float], sd: float | None) -> list[str]:
    return [f"{min(values):.3f}-{max(values):.3f}" if values else "", "" if sd is None else f"{sd:.3f}"]


def noise(leaders: list[Runs], facts: DataFacts | None) -> str:
    """How far apart trials may score by chance, and the configurations that close to the best."""
    lines = near_the_best(leaders, facts) if leaders else []
    return "".join(f"<p>{html.escape(line[0].upper() + line[1:])}.</p>" for line in lines)


def ensemble(recorded: str | None, label: str) -> str:
    """The latest ensemble ``search ensemble`` picked: its members, their weights and its
    out-of-fold score against its best single member's."""
    if not recorded:
        return ""
    kept = json.loads(recorded)
    rows = "".join(f"<tr><td>{m['trial']}</td><td>{m['weight']:.2f}</td><td>{len(m['checkpoints'])}</td></tr>"
                   for m in kept["members"])  # fmt: skip
    single = kept["best_single"]
    return (f"<h3>Out-of-fold ensemble</h3><p>Out-of-fold {html.escape(label)} {kept['out_of_fold']:.4f}, against "
            f"{single['out_of_fold']:.4f} for its best single member, trial {single['trial']}; chosen on the same "
            "predictions it is scored on, so optimistic.</p><table><tr><th>trial</th><th>weight</th><th>fold models"
            f"</th></tr>{rows}</table>")  # fmt: skip


def every_trial(trials: list[FrozenTrial], label: str, limit: int = 200) -> str:
    """Each trial's duration, best epoch and how it ended (complete, pruned at epoch k, failed and
    why), the latest ``limit``."""
    shown = [t for t in trials if t.state != TrialState.WAITING][-limit:]
    heads = "".join(f"<th>{html.escape(h)}</th>" for h in ("trial", "duration", "best epoch", label))
    head = f"<tr>{heads}<th style='text-align:left'>ended</th></tr>"
    rows = []
    for t in shown:
        kept = TrialRecord.of(t)
        start, end = t.datetime_start, t.datetime_complete
        took = (end - start).total_seconds() if start and end else None
        value = t.value if t.value is not None else max(t.intermediate_values.values(), default=None)
        cells = [t.number, duration(took), "" if kept.best_epoch is None else kept.best_epoch,
                 "" if value is None else f"{value:.4f}"]  # fmt: skip
        row = "".join(f"<td>{html.escape(str(v))}</td>" for v in cells)
        rows.append(f"<tr>{row}<td style='text-align:left'>{html.escape(ended(t))}</td></tr>")
    started = sum(t.state != TrialState.WAITING for t in trials)
    more = f"<p>The latest {limit} of {started} trials.</p>" if len(shown) < started else ""
    return f"{more}<table>{head}{''.join(rows)}</table>"


def ended(t: FrozenTrial) -> str:
    """How a trial ended, in words: 'complete', 'pruned after epoch 2', 'failed at epoch 1: loss became nan'."""
    kept = TrialRecord.of(t)
    if t.state == TrialState.PRUNED:
        return f"pruned after epoch {max(t.intermediate_values)}" if t.intermediate_values else "pruned"
    if t.state == TrialState.FAIL:
        at = f" at epoch {kept.failed_epoch}" if kept.failed_epoch is not None else ""
        return f"failed{at}: {kept.failure_reason or 'no reason recorded'}"
    again = confirms(t)
    return t.state.name.lower() + (f" (confirms trial {again}, outside the budget)" if again is not None else "")


def failed_trials(trials: list[FrozenTrial]) -> str:
    """The failed trials by reason (out of memory, NaN loss, interrupted...), if any failed."""
    groups = failures_by_reason(trials)
    if not groups:
        return ""
    rows = "".join(
        f"<tr><td style='text-align:left'>{html.escape(reason)}</td><td>{len(numbers)}</td>"
        f"<td>{', '.join(map(str, numbers))}</td></tr>"
        for reason, numbers in groups
    )
    return f"<h3>Failed trials</h3><table><tr><th>reason</th><th>how many</th><th>trials</th></tr>{rows}</table>"
