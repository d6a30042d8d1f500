"""K new worker processes open the persisted decode cache at once, as `search run --workers K` (or
K per GPU) starts them on one machine.

Two formats of the same images, in one run:
  copied: one ``.npz`` read into each process's memory (how the cache was kept before);
  mapped: the cache as ``training.data.cache`` keeps it now (``images.npy`` mapped copy-on-write,
          so the machine's page cache holds one copy for every worker).
For each: the seconds to open it, the seconds of a first pass over every image (what a first epoch,
or the copy to the GPU, reads), and the memory that opening and reading added: each process's own
(anonymous pages, which nothing else can share or the kernel reclaim) and the K processes'
proportional set size together (shared pages count once in all), then the ratios. Last, the rate
at which training batches are gathered from the mapped cache, as a GPU worker does when the images
do not fit on its GPU.

    python benchmarks/decode_cache.py                    # 6,000 images at 256x192 (0.9 GB), 4 processes
    python benchmarks/decode_cache.py --images 18900     # the mask competition's data at the study's size
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from stopping import stop_everything_on_sigterm

from training.data import cache as decode_cache

PASSED = "passed: waiting for a line on stdin"


def memory_kib() -> dict[str, int]:
    """This process's memory in KiB from ``/proc/self/smaps_rollup`` (Linux)."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields


def child(kind: str, path: str) -> None:
    """Opens the cache, reads every image once, and reports when the parent says all have read."""
    before = memory_kib()
    started = time.perf_counter()
    if kind == "copied":
        with np.load(path) as stored:
            images = stored["images"]
    else:
        images = decode_cache._load(Path(path)).images
    opened = time.perf_counter() - started
    chunk = np.empty((16, *images.shape[1:]), np.uint8)
    for start in range(0, len(images), len(chunk)):
        part = images[start : start + len(chunk)]
        chunk[: len(part)] = part
    passed = time.perf_counter() - started - opened
    print(PASSED, flush=True)
    sys.stdin.readline()  # every process holds its images now: the shared pages count shared
    after = memory_kib()
    report = {key: after[field] - before[field] for key, field in (("own", "Anonymous"), ("pss", "Pss"))}
    report.update(open=opened, passed=passed)
    print(json.dumps(report), flush=True)
    sys.stdin.readline()  # held until every process has measured


def open_at_once(kind: str, path: Path, k: int) -> list[dict[str, float]]:
    command = [sys.executable, __file__, "--child", kind, str(path)]
    procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(k)]
    try:
        for proc in procs:
            if proc.stdout.readline().strip() != PASSED:
                raise RuntimeError(f"a {kind} process failed before reading the images (status {proc.wait()})")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = [json.loads(proc.stdout.readline()) for proc in procs]
        for proc in procs:
            proc.communicate()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return reports


def staged_rate(folder: Path, batch: int) -> float:
    """Images per second of ``PinnedStaging``'s host work from the mapped cache, an epoch in random
    order: the gather of each batch into its buffer, what a GPU worker whose images do not fit on the
    GPU does per batch on a thread (the copy to the GPU that follows is the GPU's own)."""
    import torch

    from training.data.loader import PinnedStaging

    images = torch.from_numpy(decode_cache._load(folder).images)
    staging = PinnedStaging(images, batch, torch.device("cpu"))
    order = torch.randperm(len(images))
    started = time.perf_counter()
    for i, start in enumerate(range(0, len(images) - batch + 1, batch)):
        staging._gather(i % 2, order[start : start + batch])
    return (len(images) // batch) * batch / (time.perf_counter() - started)


def main() -> int:
    stop_everything_on_sigterm()
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 192), metavar=("H", "W"))
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256, help="the training batch staged from the cache")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    if min(args.images, args.processes, args.batch) < 1:
        parser.error("--images, --processes and --batch take 1 or more")

    rng = np.random.default_rng(0)
    decoded = decode_cache.DecodedImages(
        images=rng.integers(0, 256, (args.images, *args.size, 3), dtype=np.uint8),
        labels=np.arange(args.images) % 18,
        groups=None,
        paths=tuple(f"{i}.jpg" for i in range(args.images)),
        class_names=tuple(str(c) for c in range(18)),
        skipped=(),
    )
    gib = decoded.images.nbytes / 2**30
    with tempfile.TemporaryDirectory() as tmp:
        copied, mapped = Path(tmp) / "copied.npz", Path(tmp) / "decoded" / "mapped"
        np.savez(copied, images=decoded.images, labels=decoded.labels)
        if not decode_cache._save(mapped, decoded):
            raise SystemExit(f"could not write the cache under {tmp}")
        del decoded  # the children's memory is what is measured, and the page cache needs the room
        print(f"{args.images} images at {args.size[0]}x{args.size[1]} ({gib:.2f} GiB), "
              f"{args.processes} processes opening the cache at once")  # fmt: skip
        paths = {"copied": copied, "mapped": mapped}
        rows = {kind: open_at_once(kind, path, args.processes) for kind, path in paths.items()}
        staged = staged_rate(mapped, args.batch)

    figures = {}
    print(f"{'':8} {'open s':>8} {'first pass s':>13} {'own memory MiB':>16} {'PSS, all MiB':>15}")
    for kind, reports in rows.items():
        figures[kind] = {
            "open": statistics.median(r["open"] for r in reports),
            "pass": statistics.median(r["passed"] for r in reports),
            "own": statistics.median(r["own"] for r in reports) / 1024,
            "pss": sum(r["pss"] for r in reports) / 1024,
        }
        f = figures[kind]
        print(f"{kind:8} {f['open']:8.3f} {f['pass']:13.3f} {f['own']:16.0f} {f['pss']:15.0f}   (medians of processes)")
    copy, mapping = figures["copied"], figures["mapped"]
    print(f"\nopen + first pass, mapped / copied: "
          f"{(mapping['open'] + mapping['pass']) / (copy['open'] + copy['pass']):.3f}")  # fmt: skip
    print(f"memory of all {args.processes} processes (PSS), mapped / copied: {mapping['pss'] / copy['pss']:.3f}")
    print(f"each process's own memory, mapped: {mapping['own']:.0f} MiB against {copy['own']:.0f} MiB copied")
    print(f"training batches of {args.batch} gathered from the mapped cache in random order "
          f"(PinnedStaging's host work per batch): {staged:.0f} img/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
