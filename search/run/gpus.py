"""Which GPU, and what share of the machine, each worker of ``search run --workers N`` gets."""

from __future__ import annotations

import os


def worker_threads(workers: int) -> int:
    """Each of ``workers`` processes' share of this machine's CPU threads."""
    return max(1, (os.cpu_count() or 1) // workers)


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


def worker_environments(workers: int, gpus: list[str], mps: dict[str, str] | None = None) -> list[dict[str, str]]:
    """Each worker's environment: its share of this machine's CPU threads and one GPU, handed out
    round-robin (``places``). Nothing else: the storage and the study go to the worker as objects,
    never in its environment or command line.

    Under this run's own MPS daemon (``mps``: what its clients need in their environment) a worker
    names its GPU by its place in ``gpus``: the daemon was started with this process's
    CUDA_VISIBLE_DEVICES, and its server numbers the GPUs it was given from 0, so "2,5" becomes
    0 and 1 for its clients (NVIDIA's MPS guide, on CUDA_VISIBLE_DEVICES)."""
    names = [str(place) for place in range(len(gpus))] if mps is not None else gpus
    return [
        {"OMP_NUM_THREADS": str(worker_threads(workers))}
        | ({"CUDA_VISIBLE_DEVICES": names[place]} if place is not None else {})
        | (mps or {})
        for place in places(workers, gpus)
    ]


def places(workers: int, gpus: list[str]) -> list[int | None]:
    """Each worker's GPU, by its place in ``gpus``: round-robin, K workers per GPU when ``workers``
    is K times the GPUs; None for every worker of a CPU run."""
    return [index % len(gpus) if gpus else None for index in range(workers)]


def sharing(workers: int, gpus: list[str]) -> list[int]:
    """How many workers share each worker's GPU (1 for a CPU worker)."""
    placed = places(workers, gpus)
    return [placed.count(place) if place is not None else 1 for place in placed]
