"""CUDA MPS: the kernels of several workers on one GPU run at once instead of taking turns. A run
that packs workers on a GPU can start a daemon of its own around them (``search run --mps``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from training import SearchServiceError


def mps_running() -> bool:
    """Whether a CUDA MPS control daemon is up where CUDA programs look for it (its pipe folder,
    ``CUDA_MPS_PIPE_DIRECTORY`` or ``/tmp/nvidia-mps``)."""
    return (Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")) / "control").exists()


def packing_warning(trials_per_gpu: int, gpus: int, *, mps: bool) -> str | None:
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
