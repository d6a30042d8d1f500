"""Training throughput: (a) the bare model step on pre-made tensors vs (b) a full epoch through ``training/``.

Both at the default study's batch shape, in one process, alternated so that machine noise hits
both alike. Target: (b)/(a) >= 0.85 on the CPU.

    python benchmarks/training_throughput.py [--study lr-sweep] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from search.study import load_study
from training.loop import train_epoch
from training.setup import set_up


def bare_step(model, optimizer, loss_fn, x, y, steps: int) -> float:
    """Images per second of forward + backward + optimizer step on tensors already in place."""
    model.train()
    started = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if x.is_cuda:
        torch.cuda.synchronize()
    return steps * len(x) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--study", default="lr-sweep")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    config = load_study(args.study, args.set).trial_config({}, None)
    run = set_up(config)
    model, optimizer, loss_fn, data, device = run.model, run.optimizer, run.loss_fn, run.data, run.device
    steps = len(run.train_loader)
    x = torch.randn(config.batch_size, 3, *config.data.image_size, device=device)
    y = torch.randint(0, data.num_classes, (config.batch_size,), device=device)

    bare_step(model, optimizer, loss_fn, x, y, 3)  # warm-up
    a_runs, b_runs = [], []
    for epoch in range(args.repeats):
        a_runs.append(bare_step(model, optimizer, loss_fn, x, y, steps))
        _, seen, seconds = train_epoch(run, epoch)
        b_runs.append(seen / seconds)
    a, b = statistics.median(a_runs), statistics.median(b_runs)
    print(
        f"device {device}, model {config.model.name}, batch {config.batch_size} x {config.data.image_size}, "
        f"{len(data.train_idx)} training images, {torch.get_num_threads()} threads"
    )
    print(f"(a) bare model step, pre-made tensors : {a:8.0f} img/s   runs {[round(v) for v in a_runs]}")
    print(f"(b) epoch through training/           : {b:8.0f} img/s   runs {[round(v) for v in b_runs]}")
    print(f"(b)/(a)                               : {b / a:8.3f}   target >= 0.85")


if __name__ == "__main__":
    main()
