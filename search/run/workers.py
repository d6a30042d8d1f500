"""Several workers on one machine: ``search run --workers N`` (or ``--trials-per-gpu K``).

The command opens the run once, then starts worker processes whose target is the worker loop
itself, given the validated study and the run's options as objects. Light to import: the command
starts the fork server the workers come from before it imports anything heavy itself.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from dataclasses import replace
from multiprocessing import forkserver
from typing import TYPE_CHECKING

from search.run.gpus import sharing, worker_environments, worker_gpus
from search.run.mps import mps_daemon, mps_running, packing_warning
from search.run.options import RunOptions

if TYPE_CHECKING:
    import optuna

    from search.study.schema import StudySpec

# What every worker imports before its first trial (about ten seconds of CPU): the fork server
# imports it once and each worker is forked from it with all of it already loaded.
WORKER_IMPORTS = ["torch", "timm", "sklearn.metrics", "albumentations", "search.run.lifecycle"]

Plan = list[tuple["StudySpec", RunOptions, dict[str, str]]]


def start_worker_server() -> multiprocessing.context.BaseContext:
    """The fork server the workers come from; started early, its imports overlap the caller's own."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_IMPORTS)
    forkserver.ensure_running()
    return context


def run_on_workers(
    spec: StudySpec, options: RunOptions, *, trials_per_gpu: int | None, mps: bool
) -> tuple[int, optuna.Study]:
    """Open the run here, once, so that what every worker would find wrong is said once before any
    starts (the artifact folder, the storage and space, the device, the data), the study is made
    once (workers do not race to create it), and the images are decoded once into the machine's
    cache, which the workers then map; then the workers. Returns the exit code of the first that
    failed, and the study. ``trials_per_gpu``: K workers on each GPU instead of ``options.workers``; ``mps``: where a
    GPU gets several, they run under a CUDA MPS daemon of this run's own."""
    import torch

    from search.run.open import open_and_say
    from search.run.progress import Progress
    from search.store import is_sqlite

    gpus = worker_gpus(spec.train.device, torch.cuda.device_count())
    if trials_per_gpu:  # K workers on each GPU: pays where one trial leaves the GPU idle
        options = replace(options, workers=trials_per_gpu * max(1, len(gpus)))
    run = open_and_say(spec, options, Progress(quiet=options.quiet), launcher=True)  # the range test is the workers'
    packed = options.workers > len(gpus) > 0  # some GPU gets more than one worker
    if packed and (warning := packing_warning(-(-options.workers // len(gpus)), len(gpus), mps=mps or mps_running())):
        print(warning, file=sys.stderr)
    if is_sqlite(options.storage_url):
        print(
            f"search: {options.workers} workers share one SQLite file; writes are serialised. "
            "For many workers or machines use PostgreSQL (--storage postgresql+psycopg2://...).",
            file=sys.stderr,
        )
    if not (mps and packed):
        return start_workers(worker_plan(spec, options, gpus)), run.study
    with mps_daemon() as daemon:
        return start_workers(worker_plan(spec, options, gpus, daemon)), run.study


def worker_plan(spec: StudySpec, options: RunOptions, gpus: list[str], mps: dict[str, str] | None = None) -> Plan:
    """What each worker is given: its study (training on the one GPU it sees, as ``cuda``, within its
    part of that GPU's share for images; decoding into the cache folder this run decoded into), its
    options (its index) and its environment (``worker_environments``)."""
    from training import cache_folder, default_cache_dir

    train = spec.train.model_copy(update={"device": "cuda"}) if spec.train.device.startswith("cuda:") else spec.train
    data = spec.data
    if (cache := cache_folder(data.cache_dir)) not in (None, default_cache_dir(data.cache_dir)):
        data = data.model_copy(update={"cache_dir": cache})  # the fallback this run decoded into (said once)
    envs = worker_environments(options.workers, gpus, mps)
    return [
        (
            spec.model_copy(update={"train": train.sharing_the_gpu(shared) if shared > 1 else train, "data": data}),
            replace(options, worker_index=index),
            env,
        )
        for index, (env, shared) in enumerate(zip(envs, sharing(options.workers, gpus)))
    ]


def start_workers(plan: Plan) -> int:
    """One process per entry of ``plan``, forked from a server that has imported torch, timm and the
    rest once (multiprocessing's forkserver), so N workers start in the time of one instead of
    each paying its imports. That server never touches CUDA: every worker initialises its own GPU,
    which is why it is a fork server and not a plain fork of this process (which also holds an open
    database connection). Signals are forwarded to the workers; waits for them all."""
    context = start_worker_server()
    workers = [
        context.Process(target=worker_main, args=entry, name=f"search-worker-{entry[1].worker_index}") for entry in plan
    ]
    for worker in workers:
        worker.start()

    def forward(signum: int, frame: object) -> None:
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for worker in workers:
        worker.join()
    codes = [code if code >= 0 else 128 - code for code in (worker.exitcode for worker in workers)]
    bad = [code for code in codes if code != 0]
    return bad[0] if bad else 0


def worker_main(spec: StudySpec, options: RunOptions, env: dict[str, str]) -> None:
    """A worker process: this machine's share of threads and its GPU, then its trials."""
    os.environ.update(env)  # before anything initialises CUDA in this process
    import torch

    from search import console
    from search.run.lifecycle import work
    from search.run.open import open_run
    from search.run.progress import Progress
    from search.run.signals import install_signal_handlers

    torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    console.configure(prefix=f"[worker {options.worker_index}] ", debug=options.debug)
    install_signal_handlers()
    progress = Progress(quiet=options.quiet, prefix=f"[worker {options.worker_index}] " if options.workers > 1 else "")

    def trials() -> int:
        work(open_run(spec, options, progress), options, progress)
        return 0

    sys.exit(console.exit_code(trials, debug=options.debug))
