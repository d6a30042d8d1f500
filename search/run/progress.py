"""Live progress: one line per trial (epoch, F1, img/s) and one per study, not a wall of logs.

On a terminal the trial line rewrites itself; in a log file each epoch is one line. ``quiet``
prints nothing but errors.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, TextIO

from optuna.trial import FrozenTrial

from search.formats import short
from search.ranking import configurations, confirms
from search.record import shown_as


class Progress:
    def __init__(self, *, quiet: bool = False, prefix: str = "", stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self._open_line = False

    def _write(self, text: str, final: bool = True) -> None:
        if self.quiet:
            return
        if self.live:
            self.stream.write("\r\033[K" + self.prefix + text + ("\n" if final else ""))
            self._open_line = not final
        else:
            self.stream.write(self.prefix + text + "\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        self._write(text)

    def decode(self, done: int, total: int) -> None:
        """On a terminal, the count as it grows; in a log file, one line when it is done."""
        if self.live or done >= total:
            self._write(f"decoding images {done}/{total}", final=done >= total)

    def trial_started(self, number: int, params: dict[str, Any], confirming: dict[str, int] | None = None) -> None:
        self._started = time.perf_counter()
        shown = " ".join(f"{k}={short(v)}" for k, v in params.items())
        if confirming is not None:
            shown = f"confirms trial {confirming['trial']} with seed {confirming['seed']} (outside the budget): {shown}"
        self._write(f"trial {number} started: {shown}")

    def epoch(self, number: int, epoch: int, epochs: int, metrics: dict[str, Any], objective: str) -> None:
        self._write(
            f"trial {number}{_fold(metrics)} epoch {epoch} ({epoch + 1} of {epochs}) {shown_as(objective)} "
            f"{metrics[objective]:.4f} "
            f"loss {metrics['train_loss']:.4f} {metrics['train_images_per_second']:.0f} img/s",
            final=False,
        )

    def study(self, name: str, trials: Sequence[FrozenTrial], n_trials: int, objective: str) -> None:
        """The study's line after a trial: finished of the budget, by state, the confirmation runs
        (outside it), and the best so far (a confirmed configuration's mean)."""
        counts = Counter(t.state.name for t in trials if confirms(t) is None)
        confirmed = sum(t.state.name == "COMPLETE" and confirms(t) is not None for t in trials)
        finished = counts["COMPLETE"] + counts["PRUNED"]
        leaders = configurations(trials)
        if leaders:
            top = leaders[0]
            runs = f", mean of {len(top.runs)} runs" if len(top.runs) > 1 else ""
            best_text = f"best {shown_as(objective)} {top.mean:.4f} (trial {top.trial.number}{runs})"
        else:
            best_text = "no complete trial yet"
        again = f", {confirmed} confirmation run{'s' if confirmed > 1 else ''}" if confirmed else ""
        self._write(
            f"study {name}: {finished}/{n_trials} finished ({counts['COMPLETE']} complete, "
            f"{counts['PRUNED']} pruned, {counts['FAIL']} failed){again}, {best_text}"
        )


def _fold(metrics: dict[str, Any]) -> str:
    """' fold k' for an epoch of a cross-validated trial's fold k (from 0, as epochs are counted)."""
    return f" fold {metrics['fold']}" if metrics.get("fold") is not None else ""
