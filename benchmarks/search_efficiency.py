"""Search efficiency on the demo data (CPU): which sampler and pruner find a good model in fewest epochs.

Arms, each with the same trial budget and seed: random without pruning, TPE without pruning, and
TPE with each candidate pruner. Per arm and seed: the best validation macro-F1, the epochs trained,
and the epochs until a trial first reached 98% of the best F1 any arm found with that seed (counted
epoch by epoch, in trial order). Prints means and spreads over seeds, and how often pruning stopped
a trial early; writes best-F1-so-far against epochs spent, one line per arm.

    python benchmarks/search_efficiency.py [--seeds 0 1 2] [--n-trials 16] [--out search_efficiency.png]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.runner import RunOptions, worker_loop
from search.studyfile import load_study

NO_PRUNING = "{name: none}"
ARMS = {
    "random, no pruning": ("{name: random}", NO_PRUNING),
    "tpe, no pruning": ("{name: tpe, n_startup_trials: 5}", NO_PRUNING),
    "tpe + median": ("{name: tpe, n_startup_trials: 5}", "{name: median, n_startup_trials: 3, n_warmup_steps: 2}"),
    "tpe + successive halving": (
        "{name: tpe, n_startup_trials: 5}",
        "{name: successive_halving, min_resource: 2, reduction_factor: 2}",
    ),
    "tpe + hyperband": ("{name: tpe, n_startup_trials: 5}", "{name: hyperband, min_resource: 1, reduction_factor: 3}"),
}


def run_arm(sampler: str, pruner: str, seed: int, n_trials: int, home: Path, extra: list[str]) -> list:
    name = f"eff-{abs(hash((sampler, pruner, seed))) % 10**8}"
    # No enqueued configurations: the arms compare blind search, each from the same seed.
    overrides = [f"sampler={sampler}", f"pruner={pruner}", f"seed={seed}", f"name={name}", "enqueue=[]"]
    spec = load_study("lr-sweep", overrides + extra)
    options = RunOptions(
        storage_url=f"sqlite:///{home}/{name}.db", artifacts=home / name, n_trials=n_trials, timeout=None, quiet=True
    )
    study = worker_loop(spec, options)
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def curve(trials: list) -> list[tuple[int, float]]:
    """(epochs spent, best F1 so far) after every epoch, trials in the order they ran."""
    points, spent, best = [], 0, 0.0
    for trial in sorted(trials, key=lambda t: t.number):
        for step in sorted(trial.intermediate_values):
            spent += 1
            best = max(best, trial.intermediate_values[step])
            points.append((spent, best))
    return points


def epochs_to(points: list[tuple[int, float]], target: float) -> float:
    return next((spent for spent, best in points if best >= target), float("inf"))


def summary(values: list[float]) -> str:
    """Mean ± spread over the seeds that got there; how many never did."""
    reached = [v for v in values if v != float("inf")]
    never = f" ({len(values) - len(reached)} never)" if len(reached) < len(values) else ""
    if not reached:
        return "never"
    spread = statistics.stdev(reached) if len(reached) > 1 else 0.0
    digits = 3 if reached[0] < 2 else 0
    return f"{statistics.mean(reached):.{digits}f} ± {spread:.{digits}f}{never}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-trials", type=int, default=16)
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    parser.add_argument("--out", default="search_efficiency.png")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    results: dict[str, dict[int, list]] = {arm: {} for arm in args.arms}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for arm in args.arms:
                sampler, pruner = ARMS[arm]
                results[arm][seed] = run_arm(sampler, pruner, seed, args.n_trials, Path(tmp), args.set)
                print(f"seed {seed} {arm}: done", flush=True)

    curves = {arm: {s: curve(t) for s, t in by_seed.items()} for arm, by_seed in results.items()}
    best_any = {s: max(curves[arm][s][-1][1] for arm in args.arms) for s in args.seeds}
    print(f"\n{args.n_trials} trials per arm, seeds {args.seeds}; mean ± spread over seeds")
    print(f"{'arm':26} {'best F1':>15} {'epochs':>11} {'epochs to 98%':>22} {'pruned early':>13}")
    for arm in args.arms:
        best = [curves[arm][s][-1][1] for s in args.seeds]
        epochs = [float(curves[arm][s][-1][0]) for s in args.seeds]
        to98 = [float(epochs_to(curves[arm][s], 0.98 * best_any[s])) for s in args.seeds]
        pruned = [sum(t.state == TrialState.PRUNED for t in results[arm][s]) / len(results[arm][s]) for s in args.seeds]
        print(
            f"{arm:26} {summary(best):>15} {summary(epochs):>11} {summary(to98):>15} {statistics.mean(pruned):>12.0%}"
        )

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5 * len(args.seeds), 4), layout="tight")
    FigureCanvasAgg(figure)
    for k, seed in enumerate(args.seeds):
        ax = figure.add_subplot(1, len(args.seeds), k + 1)
        for arm in args.arms:
            xs, ys = zip(*curves[arm][seed])
            ax.step(xs, ys, where="post", label=arm)
        ax.axhline(0.98 * best_any[seed], color="grey", linestyle=":", label="98% of best")
        ax.set_ylim(0.5, 1.0)
        ax.set_xlabel("epochs spent")
        ax.set_ylabel("best validation macro-F1 so far")
        ax.set_title(f"seed {seed}")
        ax.legend(fontsize=7)
    figure.savefig(args.out)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
