"""How far apart two trials may score by chance, and the trials that close to the best: what
``search status`` and the report say of a study's noise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from search.ranking import Runs
from search.record import TrialRecord

if TYPE_CHECKING:
    from training import DataFacts


def near_the_best(leaders: Sequence[Runs], facts: DataFacts | None) -> list[str]:
    """How far apart two trials may score by chance, and the configurations that close to the best
    (``leaders``, ranked), which the study cannot rank against it: one validation image of the
    rarest class (``facts``, for macro-F1), or the standard error of the best's mean, over its
    runs once confirmed, else over its folds, cross-validated."""
    lines, floor = [], facts.one_image() if facts else None
    if floor:
        name, count, moves = floor
        lines.append(f"noise: one validation image of the rarest class ({name}, {count} images) moves macro-F1 "
                     f"by {moves:.4f}")  # fmt: skip
    best = leaders[0]
    kept = TrialRecord.of(best.trial)
    if best.sd is not None:
        margin = best.sd / math.sqrt(len(best.runs))
        within = f"one standard error of the best ({margin:.4f}, from its {len(best.runs)} runs)"
    elif (sd := kept.fold_sd()) is not None:
        margin = sd / math.sqrt(sum(v is not None for v in kept.fold_values))
        within = f"one standard error of the best ({margin:.4f}, from its folds)"
    elif floor:
        margin, within = floor[2], f"one validation image of the best ({floor[2]:.4f}): this split cannot rank them"
    else:
        return lines
    near = [str(r.trial.number) for r in leaders[1:] if best.mean - r.mean <= margin]
    if len(near) > 8:  # named up to 8, the rest counted
        near = [*near[:8], f"{len(near) - 8} more"]
    if near:
        shown = near[0] if len(near) == 1 else ", ".join(near[:-1]) + " and " + near[-1]
        lines.append(f"trial{'s' if len(near) > 1 else ''} {shown} {'are' if len(near) > 1 else 'is'} within {within}")
    return lines
