"""Trial throughput on one device, in one run, as ratios:

(a) the compute ceiling: the model step on pre-made device tensors (bf16 + channels_last on CUDA);
(b) the competition-style pipeline: image files decoded and augmented by albumentations in
    DataLoader worker processes, then the same model step;
(c) a trial's training epoch through ``training/`` (decoded cache; on CUDA resident on the GPU
    with device augmentation);
(d) K trials packed on the device (K processes running (c) at once), images/s together (on CUDA
    the processes start before (a) and set up while it runs);
plus the start-up of a new trial process with a warm decode cache, and a short study on generated
competition-sized data (wall time, decode time, share of the rest spent in training and
validation steps).

    python benchmarks/trial_throughput.py            # CPU, small sizes (seconds)
    python benchmarks/trial_throughput.py --gpu      # the sizes of the competition, < 5 minutes
    ... --gpu --mps      # also (d) under CUDA MPS;   ... --compile   # also (c) compiled
    ... --gpu --batch 64 --mps   # the trials at the study's own batch, where packing has room
    ... --only a,c,d             # some of the parts (the data is always made and decoded)
    ... --cudnn-limit 2          # cuDNN autotuning times fewer algorithms (a new process starts sooner)
    ... --staged                 # also (c) with the images in host memory, batches staged to the GPU
    ... --cuda-graphs            # also (c) with train.cuda_graphs (steps replayed as CUDA graphs)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from stopping import stop_everything_on_sigterm

SIZES = {
    # people, image (h, w) on disk, model input, model, batch, trials × epochs of the short study
    "cpu": {"people": 30, "photo": (96, 72), "input": 32, "model": "resnet10t", "batch": 32, "trials": 2, "epochs": 2,
            "competition_batch": 32},
    "gpu": {"people": 2700, "photo": (512, 384), "input": 224, "model": "efficientnet_b0", "batch": 256,
            "trials": 8, "epochs": 4, "competition_batch": 64},
}  # fmt: skip
PARTS = ("a", "b", "c", "d", "study")  # in the order they run; the ratios print after (d)


def make_mask_data(root: Path, people: int, photo: tuple[int, int], threads: int) -> int:
    """The competition's layout with generated photos: 7 per person, 18 classes."""
    stems = ["mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"]
    h, w = photo
    yy, xx = np.mgrid[0:h, 0:w]
    # the gradient planes, made once (building them per image held the GIL for 6x the JPEG encode)
    across = [((xx * (k + 1)) % 256).astype(np.uint8) for k in range(len(stems))]
    down = [((yy * (j + 1)) % 256).astype(np.uint8) for j in range(7)]

    def one(i: int) -> None:
        rng = np.random.default_rng(i)
        gender, age = ("male", "female")[i % 2], int(rng.integers(18, 80))
        folder = root / "images" / f"{i:06d}_{gender}_Asian_{age}"
        folder.mkdir(parents=True, exist_ok=True)
        for k, stem in enumerate(stems):
            image = np.empty((h, w, 3), np.uint8)
            image[..., 0], image[..., 1], image[..., 2] = across[k], down[i % 7], age * 3
            cv2.circle(image, (w // 2, h // 2), h // 4, (40 * k % 256, 200 if i % 2 else 60, age * 3), -1)
            cv2.imwrite(str(folder / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(people)))
    return people * 7


def timed_steps(step, batches, warmup: int, device: torch.device) -> tuple[float, float]:
    """Images per second over ``batches`` after ``warmup`` steps, and the warm-up's seconds;
    synchronises only at the ends."""
    count, began, started = 0, time.perf_counter(), None
    for i, batch in enumerate(batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started, count = time.perf_counter(), 0
        count += step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - started), started - began


def model_and_step(name: str, classes: int, device: torch.device):
    import timm

    from training.accelerate import autocast
    from training.config import OptimizerConfig, TrainConfig
    from training.setup import build_optimizer

    model = timm.create_model(name, num_classes=classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = build_optimizer(model, TrainConfig(optimizer=OptimizerConfig(lr=1e-4)), device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(batch) -> int:
        x, y = batch
        with autocast(device):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return len(y)

    return model, step


def ceiling(size: dict, device: torch.device, steps: int) -> tuple[float, float]:
    """(a) in img/s, and the seconds of the first 3 steps: in a new process on CUDA, that is where
    cuDNN tries its kernels for every layer's shape (``cudnn.benchmark``)."""
    _, step = model_and_step(size["model"], 18, device)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = torch.randn(size["batch"], 3, size["input"], size["input"], device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 18, (size["batch"],), device=device)
    return timed_steps(step, ((x, y) for _ in range(steps + 3)), 3, device)


def competition_pipeline(
    size: dict, paths: list[str], augment: list[dict], device: torch.device, steps: int, workers: int, batch: int
) -> float:
    """JPEG decode + albumentations (Resize, the study's training augmentation, Normalize) per image in
    DataLoader workers, as the competition's baseline does, feeding the same model step.

    The workers fill their prefetch queue (workers x 2 batches) while the first steps autotune; those
    batches are drained before the clock starts, so the figure is the pipeline's steady rate, not the
    GPU eating a queue made in advance."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    transform = A.Compose([A.Resize(size["input"], size["input"]), *[getattr(A, s["name"])(**{k: v for k, v in
                           s.items() if k != "name"}) for s in augment], A.Normalize(), ToTensorV2()])  # fmt: skip

    class Files(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int):
            image = cv2.cvtColor(cv2.imread(paths[i]), cv2.COLOR_BGR2RGB)
            return transform(image=image)["image"], i % 18

    prefetch = 2
    loader = torch.utils.data.DataLoader(Files(), batch_size=batch, shuffle=True, num_workers=workers,
                                         prefetch_factor=prefetch, pin_memory=device.type == "cuda",
                                         persistent_workers=True, drop_last=True)  # fmt: skip
    _, step = model_and_step(size["model"], 18, device)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    warmup = 3 + workers * prefetch

    def batches():
        served = 0
        while True:  # as many epochs as the steps need
            for x, y in loader:
                if served == warmup + steps:
                    return
                served += 1
                yield x.to(device, non_blocking=True).contiguous(memory_format=fmt), y.to(device, non_blocking=True)

    return timed_steps(step, batches(), warmup, device)[0]


def trial_epoch_throughput(config_json: str, epochs: int, barrier=None) -> dict[str, float]:
    """(c): training epochs through training/ with the trial's own loaders (compiled when the config
    says so).

    Returns img/s (``rate``), seconds from the call to the first step (``ready``), the wall clock at
    the first step (``ready_at``), the first epoch's seconds (``first_epoch``: cuDNN autotuning, and
    compiling when compiled), and each timed epoch's wall-clock start, end and images (``timed``).
    ``barrier``, when given, is called once everything is ready, before the first step."""
    started = time.perf_counter()
    from training import TrainConfig
    from training.loop import train_epoch
    from training.setup import set_up

    run = set_up(TrainConfig.model_validate_json(config_json))
    ready, ready_at = time.perf_counter() - started, time.time()
    if barrier is not None:
        barrier()
    _, _, first_epoch = train_epoch(run, 0, accumulation_steps=1)  # warm-up
    rates, timed = [], []
    for epoch in range(1, epochs + 1):
        epoch_from = time.time()
        _, seen, seconds = train_epoch(run, epoch, accumulation_steps=1)
        rates.append(seen / seconds)
        timed.append((epoch_from, time.time(), seen))
    rate = float(np.median(rates)) if rates else 0.0
    return {"rate": rate, "ready": ready, "ready_at": ready_at, "first_epoch": first_epoch, "timed": timed}


READY = "ready: waiting for a line on stdin"
CUDNN_LIMIT = "TRIAL_THROUGHPUT_CUDNN_LIMIT"  # --cudnn-limit, passed on to the child processes


def apply_cudnn_limit() -> int:
    """How many algorithms cuDNN's autotuning times per convolution in this process (``--cudnn-limit``;
    torch's default otherwise): the autotuning is most of a new CUDA process's first steps."""
    if CUDNN_LIMIT in os.environ:
        torch.backends.cudnn.benchmark_limit = int(os.environ[CUDNN_LIMIT])
    return torch.backends.cudnn.benchmark_limit


def child(args: argparse.Namespace) -> None:
    apply_cudnn_limit()

    def barrier() -> None:
        print(READY, flush=True)
        if not sys.stdin.readline():  # the benchmark ended (or failed) before it said go
            sys.exit(0)

    report = trial_epoch_throughput(Path(args.child).read_text(), args.child_epochs, barrier if args.barrier else None)
    print(json.dumps(report), flush=True)


def child_command(config_path: Path, epochs: int, barrier: bool = False) -> list[str]:
    """A new process running (c) on this config; its last line of output is ``child``'s report. With
    ``barrier`` it prints ``READY`` when set up and starts training when it reads a line."""
    return [sys.executable, __file__, "--child", str(config_path), "--child-epochs", str(epochs)] + (
        ["--barrier"] if barrier else []
    )


def child_report(stdout: str) -> dict[str, float]:
    return json.loads(stdout.strip().splitlines()[-1])


def compiled_twice(config_path: Path, epochs: int) -> list[dict[str, float]]:
    """(c) with ``train.compile``, in two new processes one after the other: the first compiles into
    the shared inductor cache, the second should find everything there."""
    command = child_command(config_path, epochs)
    return [child_report(subprocess.run(command, check=True, capture_output=True, text=True).stdout) for _ in range(2)]


class Packed:
    """(d): K new processes that train at once on the device.

    They start when made and set up in the background (imports, the persisted decode cache, the
    model and loaders), so the benchmark can make them while its own parts run on the GPU; each
    then waits at a barrier. ``ready()`` waits for all of them, ``run()`` starts their training
    together (their imports take different times) and returns the images/s of all of them
    together, each one's own rate, and the slowest one's start-up (K starting at once, as the
    workers of `search run` do).

    The figure counts only the window in which every one of them is in its timed epochs: a
    process still in its first epoch (cuDNN autotuning) loads the device without counting, and one
    running alone after the others finished is not packed. Each epoch's images count in proportion
    to the part of it inside the window."""

    def __init__(self, config_path: Path, k: int, epochs: int, env: dict[str, str] | None = None) -> None:
        command = child_command(config_path, epochs, barrier=True)
        from search.run.gpus import worker_threads

        # as `search run --workers` gives them, and ``env`` (an MPS daemon's pipe folder)
        env = dict(os.environ, OMP_NUM_THREADS=str(worker_threads(k)), **(env or {}))
        self.spawned = time.time()
        self.procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                      for _ in range(k)]  # fmt: skip
        self.waited, self.failure = False, ""

    def ready(self) -> None:
        """Blocks until every process is set up and waiting at the barrier (again: at once)."""
        if not self.waited:
            self.waited = True
            for proc in self.procs:
                while (line := proc.stdout.readline()) and line.strip() != READY:
                    pass
                if not line:
                    self.failure = f"a packed trial process exited before it was ready (status {proc.wait()})"
                    break
        if self.failure:
            raise RuntimeError(self.failure)

    def run(self) -> tuple[float, list[float], float]:
        """Trains them together, once; every process has ended when it returns or raises."""
        try:
            self.ready()
            for proc in self.procs:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            reports = [child_report(proc.communicate()[0]) for proc in self.procs]
            if any(proc.returncode for proc in self.procs):
                raise RuntimeError(f"a packed trial process failed: {[proc.returncode for proc in self.procs]}")
        finally:
            self.close()
        together = common_window_rate([r["timed"] for r in reports])
        return together, [r["rate"] for r in reports], max(r["ready_at"] for r in reports) - self.spawned

    def close(self) -> None:
        """Ends any process still waiting or running (a run that failed, or a benchmark that stopped
        before (d))."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def common_window_rate(runs: list[list[tuple[float, float, int]]]) -> float:
    """Images per second of all ``runs`` together over the window in which every run is in one of
    its epochs (start, end, images); an epoch's images count pro rata to its part in the window."""
    start, end = max(run[0][0] for run in runs), min(run[-1][1] for run in runs)
    if end <= start:
        raise RuntimeError("the packed trials' timed epochs never ran at the same time; give them more epochs")
    images = sum(
        seen * max(0.0, min(to, end) - max(begin, start)) / (to - begin) for run in runs for begin, to, seen in run
    )
    return images / (end - start)


def mask_overrides(size: dict, root: Path, home: Path) -> list[str]:
    """The shipped mask study (its augmentation included) on the generated data, at these sizes."""
    return [
        f"data.root={root}",
        f"data.image_size={size['input']}",
        f"model.name={size['model']}",
        "model.pretrained=false",
        f"train.batch_size={size['batch']}",
        f"data.cache_dir={home / 'cache'}",
    ]


def short_study(size: dict, root: Path, home: Path) -> dict:
    """The default study's sampler and pruner on the generated competition data (decoded already:
    the study's worker finds the images in memory, as a long-lived worker does)."""
    import optuna

    import training.loop as loop
    from search.run.lifecycle import run_here
    from search.run.options import RunOptions
    from search.study import load_study

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    calls: list[tuple[str, int, int, float]] = []  # (train / val, epoch, images, seconds) per call
    real_train, real_eval = loop.train_one_epoch, loop.validate

    def timed(kind: str, function):
        def wrapper(*args, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            started, result = time.perf_counter(), None
            try:
                result = function(*args, **kwargs)
                return result
            finally:  # a failed epoch (NaN loss) counts as busy too
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                epoch, images = (args[2], result[1] if result else 0) if kind == "train" else (-1, 0)
                calls.append((kind, epoch, images, time.perf_counter() - started))

        return wrapper

    overrides = mask_overrides(size, root, home) + [f"train.epochs={size['epochs']}", "enqueue=[]"]
    spec = load_study("mask-lr-sweep", overrides)
    loop.train_one_epoch, loop.validate = timed("train", real_train), timed("val", real_eval)
    try:
        options = RunOptions(storage_url=f"sqlite:///{home}/s.db", artifacts=home / "artifacts",
                             n_trials=size["trials"], timeout=None, quiet=True)  # fmt: skip
        study_started = time.perf_counter()
        study = run_here(spec, options)
        rest = time.perf_counter() - study_started
    finally:
        loop.train_one_epoch, loop.validate = real_train, real_eval
    states = [t.state.name for t in study.trials]
    train = [(epoch, images, seconds) for kind, epoch, images, seconds in calls if kind == "train"]
    first, later = [c for c in train if c[0] == 0], [c for c in train if c[0] > 0]
    val = [seconds for kind, _, _, seconds in calls if kind == "val"]

    def rate(rows: list[tuple[int, int, float]]) -> float:
        return sum(r[1] for r in rows) / max(sum(r[2] for r in rows), 1e-9)

    per_trial: list[list[tuple[int, int, float]]] = []  # one worker runs the trials one after another
    for row in train:
        if row[0] == 0 or not per_trial:
            per_trial.append([])
        per_trial[-1].append(row)
    trials = [f"#{t.number} {t.state.name.lower()} {t.params.get('loss')} {t.params.get('scheduler')}"
              f" accumulation {t.params.get('accumulation_steps')}: {rate(rows[1:] or rows):.0f} img/s after epoch 0"
              for t, rows in zip(study.trials, per_trial)]  # fmt: skip

    return {"rest": rest, "busy": sum(c[3] for c in calls),
            "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
            # where the time goes: a trial's first epoch (cuDNN autotuning, allocations) against the rest
            "first_trial_first_epoch": rate(first[:1]), "later_first_epochs": rate(first[1:]),
            "later_epochs": rate(later), "val_seconds": float(np.mean(val)) if val else 0.0,
            "trials": trials}  # fmt: skip


class Sections:
    """Runs the benchmark's parts one after another; a part that fails prints its error and the
    others still run (one run on a lent GPU should not lose every figure to one fault)."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def run(self, name: str, part) -> None:
        started = time.perf_counter()
        try:
            part()
            print(f"  ({name}: {time.perf_counter() - started:.0f} s)", flush=True)
        except Exception as error:  # noqa: BLE001 - reported, and the exit status says so
            import traceback

            traceback.print_exc()
            print(f"{name}: FAILED ({type(error).__name__}: {error})", flush=True)
            self.failed.append(name)


def main() -> int:
    stop_everything_on_sigterm()
    began = time.perf_counter()
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu", action="store_true", help="the competition's sizes on CUDA")
    parser.add_argument("--device", help="override the device (e.g. cuda with the small sizes: a smoke test)")
    parser.add_argument("--child")
    parser.add_argument("--child-epochs", type=int, default=2)
    parser.add_argument("--barrier", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--packed", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also (c) with train.compile, cold and warm cache")
    parser.add_argument("--mps", action="store_true", help="also (d) under CUDA MPS (started and stopped here)")
    parser.add_argument("--packed-early", action="store_true",
                        help="start (d)'s processes before (a) on any device (on CUDA they always do)")  # fmt: skip
    parser.add_argument(
        "--cudnn-limit", type=int, metavar="N", help="cuDNN autotuning times at most N algorithms per convolution"
    )
    parser.add_argument("--batch", type=int, help="the trial's batch for (a), (c), (d) and the short study")
    parser.add_argument(
        "--staged", action="store_true", help="also (c) with the images in host memory (as if too large for the GPU)"
    )
    parser.add_argument("--cuda-graphs", action="store_true", help="also (c) with train.cuda_graphs (CUDA only)")
    parser.add_argument(
        "--only", help=f"comma-separated parts to run ({','.join(PARTS)}); the data is always made and decoded"
    )
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    if args.cudnn_limit is not None:
        if args.cudnn_limit < 0:
            parser.error(f"--cudnn-limit: {args.cudnn_limit} is negative; give 0 (every algorithm) or more")
        os.environ[CUDNN_LIMIT] = str(args.cudnn_limit)
    cudnn_limit = apply_cudnn_limit()
    chosen = set(PARTS) if args.only is None else set(args.only.split(","))
    if chosen - set(PARTS):
        parser.error(f"--only: unknown part {', '.join(sorted(chosen - set(PARTS)))}; choose from {','.join(PARTS)}")
    size = dict(SIZES["gpu" if args.gpu else "cpu"])
    size["batch"] = args.batch or size["batch"]
    device = torch.device(args.device or ("cuda" if args.gpu else "cpu"))
    cores = os.cpu_count() or 1
    epochs = 2 if args.gpu else 1
    figures: dict[str, float] = {}
    sections = Sections()

    def show(name: str, value: str) -> None:
        print(f"{name:58} {value}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        root, home = Path(tmp) / "mask", Path(tmp) / "home"
        started = time.perf_counter()
        n = make_mask_data(root, size["people"], size["photo"], cores)
        show(
            "generated JPEGs", f"{n} at {size['photo'][0]}x{size['photo'][1]} in {time.perf_counter() - started:.1f} s"
        )
        paths = sorted(str(p) for p in root.rglob("*.jpg"))

        from search.study import load_study
        from training.data.prepare import prepare_data

        spec = load_study("mask-lr-sweep", mask_overrides(size, root, home) + [f"train.device={device.type}"])
        config = spec.trial_config({}, None)
        config_path = Path(tmp) / "config.json"
        config_path.write_text(config.model_dump_json())

        def decode() -> None:
            started = time.perf_counter()
            data = prepare_data(spec.data, spec.seed)  # a worker's first step; its trials share the result
            show(
                "decode of all JPEGs (persisted cache written)",
                f"{time.perf_counter() - started:.1f} s on {cores} cores",
            )
            if device.type == "cuda":
                from training.data.loader import resident_images

                started = time.perf_counter()
                resident_images(data.decoded.images, device)
                torch.cuda.synchronize()
                gib = data.decoded.images.nbytes / 2**30
                show(
                    "decoded images to the GPU (once per worker)",
                    f"{time.perf_counter() - started:.1f} s ({gib:.1f} GiB)",
                )

        def compute_ceiling() -> None:
            figures["a"], first_steps = ceiling(size, device, 30 if args.gpu else 10)
            show(
                f"(a) compute ceiling, {size['model']} batch {size['batch']} at {size['input']}",
                f"{figures['a']:8.0f} img/s",
            )
            show("(a) its first 3 steps in this process (cuDNN autotuning on CUDA)", f"{first_steps:.1f} s")

        def competition() -> None:
            # The competition's baseline trains at batch 64, the study's own batch size.
            augment, workers, batch = list(spec.train.augment.train), max(1, cores - 1), size["competition_batch"]
            timed_images = 7680 if args.gpu else 320
            figures["b"] = competition_pipeline(size, paths, augment, device, timed_images // batch, workers, batch)
            show(f"(b) JPEG + albumentations in {workers} DataLoader workers, batch {batch}",
                 f"{figures['b']:8.0f} img/s")  # fmt: skip

        def one_trial() -> None:
            trial = trial_epoch_throughput(config_path.read_text(), epochs)
            figures["c"], figures["c_first_epoch"] = trial["rate"], trial["first_epoch"]
            show("(c) a trial's epoch through training/", f"{figures['c']:8.0f} img/s")
            show("start-up of a trial in a running worker (data in memory)", f"{trial['ready']:.2f} s")
            if args.staged:
                staged_trial()
            if args.cuda_graphs:
                graphed_trial()

        def graphed_trial() -> None:
            name = "(c) with train.cuda_graphs (steps replayed as CUDA graphs)"
            if device.type != "cuda":
                show(name, "not run: CUDA only")
                return
            trial = trial_epoch_throughput(config.model_copy(update={"cuda_graphs": True}).model_dump_json(), epochs)
            figures["c_graphs"] = trial["rate"]
            show(name, f"{trial['rate']:8.0f} img/s ({trial['rate'] / figures['c']:.2f} of (c))")
            first = f"{trial['first_epoch']:.1f} s (plain: {figures['c_first_epoch']:.1f} s)"
            show("(c) with CUDA graphs: first epoch (the capture in it)", first)

        def staged_trial() -> None:
            name = "(c) with the images in host memory (batches staged to the GPU)"
            if device.type != "cuda":
                show(name, "not run: CUDA only (on the CPU every batch comes from host memory)")
                return
            import training.setup as setup

            real = setup.resident_images
            setup.resident_images = lambda images, device, share=0.5: torch.from_numpy(images)  # as if too large
            try:
                rate = trial_epoch_throughput(config_path.read_text(), epochs)["rate"]
            finally:
                setup.resident_images = real
            show(name, f"{rate:8.0f} img/s ({rate / figures['c']:.2f} of (c))")

        sections.run("decode", decode)  # first: every later part, and (d)'s processes, read its cache
        # On CUDA, (d)'s processes start before (a): their set-up (host and disk work, 14-18 s on the
        # H200 machine) overlaps (a)'s GPU-bound autotuning instead of adding to the run. They are
        # waiting before (b) starts, whose figure is the host's; on the CPU every part is the host's.
        early_start = (device.type == "cuda" or args.packed_early) and {"a", "d"} <= chosen
        early = Packed(config_path, args.packed, epochs) if early_start else None

        def packed_trials() -> None:
            figures["d"], each, startup = (early or Packed(config_path, args.packed, epochs)).run()
            show(f"(d) {args.packed} trials packed on the device",
                 f"{figures['d']:8.0f} img/s together ({', '.join(f'{r:.0f}' for r in each)})")  # fmt: skip
            show(
                f"start-up of a new worker process, warm decode cache on disk ({args.packed} at once"
                + (", during (a))" if early else ")"),
                f"{startup:.1f} s",
            )
            if not args.mps:
                return
            from search.run.mps import mps_daemon
            from training.errors import SearchServiceError

            try:
                with mps_daemon() as mps:  # what `search run --mps` starts
                    # new processes: CUDA starts in them after the daemon did
                    figures["d_mps"], each, _ = Packed(config_path, args.packed, epochs, mps).run()
            except SearchServiceError as error:
                show("(d) under CUDA MPS", f"not run: {error}")
                return
            show(f"(d) {args.packed} trials packed, under CUDA MPS",
                 f"{figures['d_mps']:8.0f} img/s together ({', '.join(f'{r:.0f}' for r in each)})")  # fmt: skip

        def ratios() -> None:
            print()
            for top, bottom, note in [
                ("c", "a", "target >= 0.9 on the GPU, >= 0.85 on the CPU"),
                ("c", "b", "target >= 4 on the GPU ((b) at the competition's batch)"),
                ("d", "c", "target >= 1.3 at K = 2"),
                ("d_mps", "c", "under CUDA MPS"),
                ("c_graphs", "a", "(c) with CUDA graphs, against the eager step"),
            ]:
                if top in figures and bottom in figures:
                    print(f"({top[0]})/({bottom}) = {figures[top] / figures[bottom]:.2f}   {note}")
            if early and device.type != "cuda":  # (a) ran while (d)'s processes started on the same cores
                print("(a) shared this CPU with (d)'s start-up (--packed-early): ratios to (a) say nothing here")
            print(flush=True)

        def study() -> None:
            result = short_study(size, root, home)
            show(f"short study: {size['trials']} trials x {size['epochs']} epochs, wall after decode",
                 f"{result['rest']:.1f} s ({result['complete']} complete, {result['pruned']} pruned)")  # fmt: skip
            show("short study: busy share (train + validation steps / wall after decode)",
                 f"{result['busy'] / result['rest']:.2f}")  # fmt: skip
            show("short study: training img/s, trial 0's first epoch / later trials' first / other epochs",
                 f"{result['first_trial_first_epoch']:.0f} / {result['later_first_epochs']:.0f} / "
                 f"{result['later_epochs']:.0f}")  # fmt: skip
            show("short study: validation per epoch", f"{result['val_seconds']:.2f} s")
            for line in result["trials"]:
                print(f"  {line}")

        def compile_twice() -> None:
            compiled_path = Path(tmp) / "compiled.json"
            compiled_path.write_text(config.model_copy(update={"compile": True}).model_dump_json())
            cold, warm = compiled_twice(compiled_path, epochs)
            plain = figures.get("c_first_epoch", float("nan"))
            first = f"{cold['first_epoch']:.1f} s / {warm['first_epoch']:.1f} s (plain: {plain:.1f} s)"
            show("(c) compiled: first epoch, new cache / cache from the first process", first)
            show(
                "(c) compiled",
                f"{warm['rate']:8.0f} img/s ({warm['rate'] / figures.get('c', float('nan')):.2f} of plain)",
            )

        # The ratios print as soon as (a)-(d) are known: a run cut short later still has them.
        parts = {"a": compute_ceiling, "b": competition, "c": one_trial, "d": packed_trials, "study": study}
        try:
            for key in PARTS:
                if key in chosen:
                    sections.run("short study" if key == "study" else f"({key})", parts[key])
                if key == "a" and early:
                    sections.run("(d) processes set up", early.ready)
                if key == "d":
                    sections.run("ratios", ratios)
            if args.compile:
                sections.run("compiled (c)", compile_twice)
        finally:
            if early:
                early.close()
        name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {cores} cores"
        print(f"device: {name}; torch {torch.__version__}; cuDNN autotuning times up to {cudnn_limit or 'all'} "
              "algorithms per convolution")  # fmt: skip
        print(f"whole benchmark: {time.perf_counter() - began:.0f} s after its imports (GPU mode: target < 300 s)")
    if sections.failed:
        print(f"failed: {', '.join(sections.failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
