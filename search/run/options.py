"""How a run goes: its storage, artifact folder, budget, workers and heartbeats, as one object that
the command builds and every worker process is given."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RunOptions:
    storage_url: str = field(repr=False)  # may hold a password: never printed, never in argv or the environment
    artifacts: Path
    n_trials: int  # finished trials (complete + pruned) the whole study should reach
    timeout: float | None  # seconds after which this worker starts no new trial
    workers: int = 1  # worker processes of this run on this machine
    worker_index: int = 0  # which of them this one is
    quiet: bool = False
    debug: bool = False  # tracebacks instead of one-line errors, Optuna's own log
    heartbeat_interval: int = 10  # seconds between a running trial's heartbeats
    grace_period: int = 30  # seconds without one after which a trial's worker counts as gone
