"""SIGTERM and SIGINT in a worker: the running trial is marked FAIL (interrupted) before it exits."""

from __future__ import annotations

import signal
import time


class Interrupted(KeyboardInterrupt):
    """SIGTERM turned into an exception, so the running trial is marked FAIL like on Ctrl-C."""

    exit_code = 143


# A repeat of an interrupt within this many seconds is the same interrupt: a terminal's Ctrl-C
# reaches each worker of `--workers N` directly and again through the command that started them,
# and the second must not cut short the first one's bookkeeping (marking the trial FAIL).
REPEAT_SECONDS = 1.0


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT stop the run at once, as ``Interrupted`` / ``KeyboardInterrupt``; the
    same again within ``REPEAT_SECONDS`` is ignored, a later one interrupts again."""
    last = {"at": -REPEAT_SECONDS}

    def on_signal(signum: int, frame: object) -> None:
        now = time.monotonic()
        if now - last["at"] < REPEAT_SECONDS:
            return
        last["at"] = now
        raise Interrupted() if signum == signal.SIGTERM else KeyboardInterrupt()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
