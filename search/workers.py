"""Several workers on one machine: ``search run --workers N`` runs N worker processes.

Kept apart from ``runner`` (and light to import) so the command can start the fork server the
workers come from before it imports anything heavy itself.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from multiprocessing import forkserver
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from search.runner import RunOptions

# What every worker imports before its first trial (about ten seconds of CPU): the fork server
# imports it once and each worker is forked from it with all of it already loaded.
WORKER_IMPORTS = ["torch", "timm", "sklearn.metrics", "albumentations", "search.runner", "search.pictures"]


def start_worker_server() -> multiprocessing.context.BaseContext:
    """The fork server the workers come from; started early, its imports overlap the caller's own."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_IMPORTS)
    forkserver.ensure_running()
    return context


def run_workers(argv: list[str], options: RunOptions) -> int:
    """Run ``options.workers`` workers of this command, each in its own process, and wait for them.

    The workers are forked from a server process that has imported torch, timm and the rest once
    (multiprocessing's forkserver), so N workers start in the time of one instead of each paying
    its imports. That server never touches CUDA: every worker initialises its own GPU, which is
    why it is a fork server and not a plain fork of this process (which also holds an open
    database connection). GPUs are handed out round-robin; the storage URL travels in the
    worker's environment, never in a command line, so its password does not show in a process
    list. Signals are forwarded to the workers.
    """
    import torch

    envs = worker_environments(options.workers, _visible_gpus(torch.cuda.device_count()), options.storage_url)
    context = start_worker_server()
    workers = []
    for index, env in enumerate(envs):
        worker_argv = [*argv, "--workers", str(options.workers), "--worker-index", str(index)]
        workers.append(context.Process(target=_worker_main, args=(worker_argv, env), name=f"search-worker-{index}"))
        workers[-1].start()

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


def mps_running() -> bool:
    """Whether a CUDA MPS control daemon is up where CUDA programs look for it (its pipe folder,
    ``CUDA_MPS_PIPE_DIRECTORY`` or ``/tmp/nvidia-mps``)."""
    return (Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")) / "control").exists()


def packing_warning(trials_per_gpu: int, gpus: int, mps: bool) -> str | None:
    """What to tell a user who packs several trials on each GPU without MPS, or None."""
    if trials_per_gpu < 2 or not gpus or mps:
        return None
    return (
        f"search: {trials_per_gpu} trials per GPU take turns on it (no CUDA MPS daemon found); two mask-study "
        "trials at batch 256 trained at 0.82-0.95x one alone on an H200. Start `nvidia-cuda-mps-control -d` first, "
        "or use --trials-per-gpu 1 for trials that keep the GPU busy."
    )


def worker_threads(workers: int) -> int:
    """Each of ``workers`` processes' share of this machine's CPU threads."""
    return max(1, (os.cpu_count() or 1) // workers)


GPU_WORKERS = "SEARCH_GPU_WORKERS"  # how many workers share this worker's GPU


def worker_environments(workers: int, gpus: list[str], storage_url: str) -> list[dict[str, str]]:
    """Each worker's environment: the storage, its share of this machine's CPU threads, and one GPU,
    handed out round-robin (K workers per GPU when ``workers`` is K times the GPUs), with the
    number of workers on that GPU."""
    on_gpu = [gpus[index % len(gpus)] for index in range(workers)] if gpus else []
    return [
        {"SEARCH_STORAGE": storage_url, "OMP_NUM_THREADS": str(worker_threads(workers))}
        | ({"CUDA_VISIBLE_DEVICES": on_gpu[index], GPU_WORKERS: str(on_gpu.count(on_gpu[index]))} if gpus else {})
        for index in range(workers)
    ]


def _visible_gpus(count: int) -> list[str]:
    """The GPUs workers may be given, as CUDA_VISIBLE_DEVICES entries (within the caller's own list)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip()][:count]
    return [str(index) for index in range(count)]


def _worker_main(argv: list[str], env: dict[str, str]) -> None:
    """A worker process: this machine's share of threads and its GPU, then the ``search`` command."""
    os.environ.update(env)  # before anything initialises CUDA in this process
    import torch

    from search.cli import main

    torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    sys.exit(main(argv))
