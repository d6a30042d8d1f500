"""Several workers on one machine: ``search run --workers N`` runs N worker processes.

Kept apart from ``runner`` (and light to import) so the command can start the fork server the
workers come from before it imports anything heavy itself.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing import forkserver
from pathlib import Path
from typing import TYPE_CHECKING

from training.errors import SearchServiceError

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


def run_workers(argv: list[str], options: RunOptions, gpus: list[str], mps: dict[str, str] | None = None) -> int:
    """Run ``options.workers`` workers of this command, each in its own process, and wait for them.

    The workers are forked from a server process that has imported torch, timm and the rest once
    (multiprocessing's forkserver), so N workers start in the time of one instead of each paying
    its imports. That server never touches CUDA: every worker initialises its own GPU, which is
    why it is a fork server and not a plain fork of this process (which also holds an open
    database connection). ``gpus`` (``worker_gpus``) are handed out round-robin; the storage URL
    travels in the worker's environment, never in a command line, so its password does not show in
    a process list. Signals are forwarded to the workers. ``mps``: the environment of this run's own
    MPS daemon (``mps_daemon``), if it has one.
    """
    envs = worker_environments(options.workers, gpus, options.storage_url, mps)
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
        "trials at batch 256 trained at 0.82-0.95x one alone on an H200. Add --mps (a daemon for this run), "
        "or use --trials-per-gpu 1 for trials that keep the GPU busy."
    )


MPS_CONTROL = "nvidia-cuda-mps-control"


@contextlib.contextmanager
def mps_daemon(ready_within: float = 10.0) -> Iterator[dict[str, str] | None]:
    """A CUDA MPS control daemon of this run's own while the block runs, so that the kernels of
    the workers packed on one GPU run at once instead of taking turns.

    Yields what its clients need in their environment (its pipe and log folders, in a temporary
    folder of its own: nothing else on the machine connects to it by chance), or None when a
    daemon already runs where CUDA programs look by default, which the workers then use as it is.
    It runs in the foreground as this process's child, in a session of its own (a Ctrl-C meant
    for the workers does not take their GPU away while they mark their trials), and is told to
    quit when the block ends, after the workers did. Processes must start CUDA after it is up.
    """
    if mps_running():
        yield None
        return
    control = shutil.which(MPS_CONTROL)
    if control is None:
        raise SearchServiceError(
            f"--mps: {MPS_CONTROL} is not on PATH (it comes with the NVIDIA driver; in a container, with the "
            "NVIDIA container toolkit's compute capability); install it, or run without --mps"
        )
    home = Path(tempfile.mkdtemp(prefix="search-mps-"))
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(home / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(home / "log")}
    for folder in env.values():
        Path(folder).mkdir()
    output = (home / "daemon.out").open("wb")
    daemon = subprocess.Popen(
        [control, "-f"], env=os.environ | env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + ready_within
        while not (home / "pipe" / "control").exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                said = _last_line(home / "daemon.out") or _last_line(home / "log" / "control.log")
                raise SearchServiceError(
                    f"--mps: {MPS_CONTROL} did not start "
                    + (f"(exit status {daemon.returncode})" if daemon.returncode is not None else "in time")
                    + (f": {said}" if said else "")
                    + "; run without --mps, or start a daemon yourself (nvidia-cuda-mps-control -d)"
                )
            time.sleep(0.05)
        yield env
    finally:
        if daemon.poll() is None:
            try:
                subprocess.run([control], input=b"quit\n", env=os.environ | env, capture_output=True, timeout=30)
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        output.close()
        shutil.rmtree(home, ignore_errors=True)


def _last_line(path: Path) -> str:
    """The last non-empty line of a text file, or "" if there is none."""
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""
    return ""


def worker_threads(workers: int) -> int:
    """Each of ``workers`` processes' share of this machine's CPU threads."""
    return max(1, (os.cpu_count() or 1) // workers)


GPU_WORKERS = "SEARCH_GPU_WORKERS"  # how many workers share this worker's GPU


def worker_environments(
    workers: int, gpus: list[str], storage_url: str, mps: dict[str, str] | None = None
) -> list[dict[str, str]]:
    """Each worker's environment: the storage, its share of this machine's CPU threads, and one GPU,
    handed out round-robin (K workers per GPU when ``workers`` is K times the GPUs), with the
    number of workers on that GPU.

    Under this run's own MPS daemon (``mps``: what its clients need in their environment) a worker
    names its GPU by its place in ``gpus``: the daemon was started with this process's
    CUDA_VISIBLE_DEVICES, and its server numbers the GPUs it was given from 0, so "2,5" becomes
    0 and 1 for its clients (NVIDIA's MPS guide, on CUDA_VISIBLE_DEVICES)."""
    names = [str(place) for place in range(len(gpus))] if mps is not None else gpus
    on_gpu = [names[index % len(names)] for index in range(workers)] if gpus else []
    return [
        {"SEARCH_STORAGE": storage_url, "OMP_NUM_THREADS": str(worker_threads(workers))}
        | ({"CUDA_VISIBLE_DEVICES": on_gpu[index], GPU_WORKERS: str(on_gpu.count(on_gpu[index]))} if gpus else {})
        | (mps or {})
        for index in range(workers)
    ]


def worker_gpus(device: str, count: int) -> list[str]:
    """The GPUs the workers of a study on ``train.device`` are given, as CUDA_VISIBLE_DEVICES
    entries (within the caller's own list), of the ``count`` torch finds: all of them for ``auto``
    and ``cuda``, the one it names for ``cuda:N`` (every worker on that GPU, where it is ``cuda``),
    none for the CPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [gpu.strip() for gpu in visible.split(",") if gpu.strip()][:count]
    else:
        gpus = [str(index) for index in range(count)]
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cuda"):
        return []
    return [gpus[int(index)]] if index.isdigit() and int(index) < len(gpus) else gpus


def _worker_main(argv: list[str], env: dict[str, str]) -> None:
    """A worker process: this machine's share of threads and its GPU, then the ``search`` command."""
    os.environ.update(env)  # before anything initialises CUDA in this process
    import torch

    from search.cli import main

    torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    sys.exit(main(argv))
