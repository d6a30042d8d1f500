"""SIGTERM and SIGINT in a worker: one interrupt, however many copies of it arrive."""

from __future__ import annotations

import signal

import pytest


def test_an_interrupt_repeated_at_once_is_the_same_interrupt_a_later_one_interrupts_again(monkeypatch):
    """The second copy of a Ctrl-C must not cut short the first one's bookkeeping; a deliberate
    second Ctrl-C later still stops what the first one started."""
    from search.run import signals

    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    clock = iter([100.0, 100.2, 101.5, 200.0, 200.1])
    monkeypatch.setattr(signals.time, "monotonic", lambda: next(clock))
    try:
        signals.install_signal_handlers()
        with pytest.raises(KeyboardInterrupt) as first:
            signal.raise_signal(signal.SIGINT)
        assert not isinstance(first.value, signals.Interrupted)
        try:
            signal.raise_signal(signal.SIGINT)  # 0.2 s later: the same Ctrl-C, nothing raised
        except KeyboardInterrupt:
            pytest.fail("the repeat of an interrupt 0.2 s later interrupted again")
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # 1.5 s after the first: a new one
        with pytest.raises(signals.Interrupted):
            signal.raise_signal(signal.SIGTERM)
        try:
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt:
            pytest.fail("the repeat of a SIGTERM 0.1 s later interrupted again")
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
