"""A benchmark stopped with SIGTERM (a scheduler's or a CI runner's stop, ``kill``) ends as Ctrl-C
ends it: the processes it started through ``multiprocessing`` are terminated at once, and the
interrupt runs its ``finally`` blocks and context managers, which end its other processes (the
workers, PgBouncer) and remove its temporary folders. Without this, Python dies at SIGTERM without
unwinding, and its workers go on holding PostgreSQL connections."""

from __future__ import annotations

import multiprocessing
import signal


def stop_everything_on_sigterm() -> None:
    """Call first in a benchmark's ``main``."""
    signal.signal(signal.SIGTERM, _stop)


def _stop(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second SIGTERM does not cut the unwinding short
    for child in multiprocessing.active_children():
        child.terminate()
    raise KeyboardInterrupt
