"""How far apart two trials may score by chance, and the trials that close to the best: what
``search status`` and the report say of a study's noise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial

from search.record import TrialRecord

if TYPE_CHECKING:
    from training import DataFacts


def near_the_best(complete: Sequence[FrozenTrial], facts: DataFacts | None) -> list[str]:
    """How far apart two trials may score by chance, and the trials that close to the best (ranked
    ``complete`` trials), which the study cannot rank against it: one validation image of the
    rarest class (``facts``, for macro-F1), or for a cross-validated best, the standard error of its
    folds' mean."""
    lines, floor = [], facts.one_image() if facts else None
    if floor:
        name, count, moves = floor
        lines.append(f"noise: one validation image of the rarest class ({name}, {count} images) moves macro-F1 "
                     f"by {moves:.4f}")  # fmt: skip
    best = complete[0]
    kept = TrialRecord.of(best)
    if (sd := kept.fold_sd()) is not None:
        margin = sd / math.sqrt(sum(v is not None for v in kept.fold_values))
        within = f"one standard error of the best ({margin:.4f}, from its folds)"
    elif floor:
        margin, within = floor[2], f"one validation image of the best ({floor[2]:.4f}): this split cannot rank them"
    else:
        return lines
    near = [str(t.number) for t in complete[1:] if best.value - t.value <= margin]
    if len(near) > 8:  # named up to 8, the rest counted
        near = [*near[:8], f"{len(near) - 8} more"]
    if near:
        shown = near[0] if len(near) == 1 else ", ".join(near[:-1]) + " and " + near[-1]
        lines.append(f"trial{'s' if len(near) > 1 else ''} {shown} {'are' if len(near) > 1 else 'is'} within {within}")
    return lines
