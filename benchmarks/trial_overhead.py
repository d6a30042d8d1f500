"""Time a trial spends outside training (sampling, storage writes, reports, pruning checks,
artifact upload, retention, the trial gate) as a share of trial time, on SQLite and PostgreSQL.

Runs the demo study in this process with ``train`` wrapped: time inside ``train`` minus time in
its epoch callback is training; everything else from the first trial's start to the last one's
end is overhead. Once-per-worker costs are printed apart: opening the storage and loading the
study before the first trial, and after the last one waiting for its pictures (drawn in the
background while the next trial trains, so only the worker's last trial waits for them).
Target <= 2%.

    python benchmarks/trial_overhead.py [--n-trials 6] [--postgres URL]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import optuna

import search.run.objective as objective_module
from search.run.lifecycle import run_here
from search.run.options import RunOptions
from search.study import load_study
from training import prepare_data


def measure(url: str, n_trials: int, overrides: list[str], artifacts: Path) -> dict:
    spec = load_study("lr-sweep", overrides + [f"name=overhead-{uuid.uuid4().hex[:8]}"])
    prepare_data(spec.data, spec.seed)  # decoding is not a per-trial cost: warm it first
    real_train = objective_module.train
    inside = {"train": 0.0, "callback": 0.0}

    def timed_train(config, on_epoch_end):
        def timed_callback(epoch, metrics):
            started = time.perf_counter()
            try:
                return on_epoch_end(epoch, metrics)
            finally:
                inside["callback"] += time.perf_counter() - started

        started = time.perf_counter()
        try:
            return real_train(config, timed_callback)
        finally:
            inside["train"] += time.perf_counter() - started

    # Trial time runs from the first trial's start to the last one's end.
    real_optimize = optuna.Study.optimize
    marks = {}

    def timed_optimize(study, *args, **kwargs):
        marks.setdefault("start", time.perf_counter())
        try:
            return real_optimize(study, *args, **kwargs)
        finally:
            marks["end"] = time.perf_counter()

    objective_module.train = timed_train
    optuna.Study.optimize = timed_optimize
    options = RunOptions(storage_url=url, artifacts=artifacts, n_trials=n_trials, timeout=None, quiet=True)
    started = time.perf_counter()
    try:
        run_here(spec, options)
    finally:
        objective_module.train = real_train
        optuna.Study.optimize = real_optimize
    closed = time.perf_counter()
    startup, wall, closing = marks["start"] - started, marks["end"] - marks["start"], closed - marks["end"]
    training = inside["train"] - inside["callback"]
    optuna.delete_study(study_name=spec.name, storage=url)
    return {"wall": wall, "training": training, "overhead": wall - training, "startup": startup, "closing": closing}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-trials", type=int, default=6)
    parser.add_argument("--postgres", default="postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        rows = {
            "sqlite": measure(f"sqlite:///{tmp}/bench.db", args.n_trials, args.set, Path(tmp) / "a1"),
            "postgresql": measure(args.postgres, args.n_trials, args.set, Path(tmp) / "a2"),
        }
    header = ("storage", "trials", "trials s", "training s", "outside s", "share", "start-up s", "closing s")
    print(f"{header[0]:12} " + " ".join(f"{h:>{max(6, len(h))}}" for h in header[1:]))
    for name, r in rows.items():
        print(
            f"{name:12} {args.n_trials:>6} {r['wall']:8.1f} {r['training']:10.1f} {r['overhead']:9.2f} "
            f"{r['overhead'] / r['wall']:6.2%} {r['startup']:10.2f} {r['closing']:9.2f}"
        )
    print(
        "trials s: from the first trial's start to the last one's end; once per worker: start-up (opening "
        "the storage) and closing (the last trial's pictures)"
    )
    print("target: share <= 2%")


if __name__ == "__main__":
    main()
