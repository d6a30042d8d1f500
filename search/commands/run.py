"""``search run``: run a study, or continue it, until it has its finished trials."""

from __future__ import annotations

import argparse
import json
import os
import sys

from search.commands import arguments

HELP = "run a study, or continue it, until it has its finished trials"
SHARED = ("storage", "artifacts", "quiet")
EXAMPLES = """examples:
  search run --study lr-sweep
  MASK_DATA=/data/train search run --study mask-lr-sweep --trials-per-gpu 2 --mps \\
      --storage postgresql+psycopg2://search@db/search
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.study(parser, "a study file: a name in ./studies or the project's studies/, or a YAML path")
    parser.add_argument(
        "--n-trials", type=arguments.count(1), metavar="N",
        help="finished trials (complete and pruned) the whole study should reach (default: budget.n_trials)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=arguments.seconds, metavar="S",
        help="seconds after which no new trial starts (budget.timeout)",
    )  # fmt: skip
    parser.add_argument("--workers", type=arguments.count(1), default=1, metavar="N", help="worker processes here")
    parser.add_argument(
        "--trials-per-gpu", type=arguments.count(1), metavar="K", help="K workers on each GPU (instead of --workers)"
    )
    parser.add_argument(
        "--mps", action="store_true",
        help="where a GPU gets several workers: run them under a CUDA MPS daemon of this run (kernels run at once)",
    )  # fmt: skip
    arguments.overrides(parser)
    parser.add_argument(
        "--warm-start", metavar="STUDY",
        help="queue the best trials of STUDY, in the same storage, as this study's first (warm_start.study)",
    )  # fmt: skip
    parser.add_argument(
        "--heartbeat-interval", type=arguments.count(1), default=10, metavar="S",
        help="seconds between a running trial's heartbeats (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--grace-period", type=arguments.count(1), metavar="S",
        help="seconds without a heartbeat after which a trial's worker counts as gone (default: 3 heartbeats)",
    )  # fmt: skip


def take_action(args: argparse.Namespace) -> int:
    given_storage = args.storage or os.environ.get("SEARCH_STORAGE")
    spawning = args.workers > 1 or bool(args.trials_per_gpu)
    if spawning:
        from search.run.workers import start_worker_server

        # The workers get the storage as an object; the variable (which may hold a password) stays
        # out of the environment they and their fork server start with.
        os.environ.pop("SEARCH_STORAGE", None)
        start_worker_server()  # the workers' imports happen there while this process does its own

    from search.run.options import RunOptions
    from search.study import load_study

    # the name quoted, as YAML reads it: a study named 2024 stays a name
    warm = [f"warm_start.study={json.dumps(args.warm_start)}"] if args.warm_start else []
    spec = load_study(args.study, [*args.set, *warm])  # before the heavy imports: a typo is answered at once
    from search.store import artifact_dir, resolve_storage_url

    run = RunOptions(
        storage_url=resolve_storage_url(given_storage),
        artifacts=artifact_dir(args.artifacts),
        n_trials=args.n_trials or spec.budget.n_trials,
        timeout=args.timeout or spec.budget.timeout,
        workers=args.workers,
        quiet=args.quiet,
        debug=args.debug,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period or 3 * args.heartbeat_interval,
    )
    if spawning:
        from search.run.workers import run_on_workers

        code, study = run_on_workers(spec, run, trials_per_gpu=args.trials_per_gpu, mps=args.mps)
    else:
        from search.run.lifecycle import run_here
        from search.run.signals import install_signal_handlers

        install_signal_handlers()
        code, study = 0, run_here(spec, run)
    if code == 0 and not args.quiet:
        from search.ranking import configurations
        from search.record import shown_as

        leaders = configurations(study.get_trials(deepcopy=False))
        top = leaders[0] if leaders else None
        runs = f" (mean of {len(top.runs)} runs)" if top and top.sd is not None else ""
        shown = (
            f"best trial {top.trial.number}: {shown_as(spec.objective)} {top.mean:.4f}{runs}"
            if top
            else "no complete trial"
        )
        print(shown, file=sys.stderr)
    return code
