"""Pause points: named moments of a worker's life where ``benchmarks/chaos.py`` kills it.

Only where ``$SEARCH_PAUSE_POINTS`` names a file (the benchmark and its test set it) does a
worker at a pause point append ``PID NAME TIME`` to it and sleep ``$SEARCH_PAUSE_SECONDS`` (default
1), so that a kill can land inside that moment. Otherwise a pause point does nothing.
"""

from __future__ import annotations

import os
import time


def pause_point(name: str) -> None:
    """The moment ``name``: announced and held a moment, for the chaos benchmark only."""
    path = os.environ.get("SEARCH_PAUSE_POINTS")
    if not path:
        return
    with open(path, "a") as log:
        log.write(f"{os.getpid()} {name} {time.time():.3f}\n")
    time.sleep(float(os.environ.get("SEARCH_PAUSE_SECONDS", "1")))
