"""Search efficiency on the demo data (CPU): does the default study find a good model in fewer epochs?

Arms, each with the same trial budget and seed, the rest of the study as shipped in
``studies/lr-sweep.yaml``:

- random sampler, no pruning (a practitioner's blind sweep);
- the study's sampler (TPE), no pruning;
- the study's sampler and pruner, blind (no enqueued configurations);
- the default study as shipped: sampler, pruner and its enqueued known-good configurations;
- the default study with a learning-rate range test first (``lr: {lr_find: true}``), the test's
  steps counted as epochs (its steps over the batches of one epoch);
- the default study warm-started from the same study run on the easy demo (the shipped data
  settings with the other ``--set`` overrides, half the trials), whose own trials are not counted.

Per arm and seed: the best validation macro-F1, the epochs trained, the epochs until a trial first
reached 98% of the best F1 any arm found with that seed (epoch by epoch, in trial order) and the
share of trials pruned. Prints means and spreads over seeds, and each arm against the default
study as the target asks: at most half its epochs to the mark, a best F1 at most 0.005 lower.
Writes best-F1-so-far against epochs spent, one line per arm.

First it prints whether the setting can separate search from luck: how much one validation image
moves macro-F1, then the spread of final macro-F1 across the space (the random arm's trials) and the
queued configurations against the best any arm found.

Pruners are chosen by replaying the random arm's trials through each candidate: a random sampler's
parameters do not depend on pruning, so a replay is exactly what that pruner would have done, and
every pruned trial's full curve is known. Trials pruned in the pruned arms are also checked against
the same parameters' unpruned run (TPE's start-up trials coincide across arms with one seed).

    python benchmarks/search_efficiency.py [--seeds 0 1 2] [--n-trials 16] [--out search_efficiency.png]
        [--arms ...] [--set KEY=VALUE ...] [--beyond 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search import lr_find
from search.run.lifecycle import run_here
from search.run.options import RunOptions
from search.study import load_study
from search.study.schema import StudySpec

NO_PRUNING = "{name: none}"
BLIND = "enqueue=[]"
RANGE_TEST = "space.lr={lr_find: true, low: 3.0e-4, high: 3.0e-2}"  # the shipped range, tested first
WARM = "warm_start={study: easy, top: 3}"  # the easy demo's study, run first in the same storage
# (sampler override, pruner override, enqueue override, one more override); None keeps the study's own.
ARMS: dict[str, tuple[str | None, str | None, str | None, str | None]] = {
    "random, no pruning": ("{name: random}", NO_PRUNING, BLIND, None),
    "tpe, no pruning": (None, NO_PRUNING, BLIND, None),
    "tpe + pruner, blind": (None, None, BLIND, None),
    "default study": (None, None, None, None),
    "default + range test": (None, None, None, RANGE_TEST),
    "default, warm-started": (None, None, None, WARM),
}
# Candidates replayed on the random arm's trials (max_resource = the study's epochs).
CANDIDATES: dict[str, Callable[[int], optuna.pruners.BasePruner]] = {
    "median (3 start-up, warm-up 1)": lambda e: optuna.pruners.MedianPruner(3, 1),
    "median (3 start-up, warm-up 2)": lambda e: optuna.pruners.MedianPruner(3, 2),
    "percentile 75 (3, warm-up 1)": lambda e: optuna.pruners.PercentilePruner(75, 3, 1),
    "percentile 75 (3, warm-up 2)": lambda e: optuna.pruners.PercentilePruner(75, 3, 2),
    "successive halving (r 1, f 2)": lambda e: optuna.pruners.SuccessiveHalvingPruner(min_resource=1),
    "successive halving (r 2, f 2)": lambda e: optuna.pruners.SuccessiveHalvingPruner(min_resource=2),
    "successive halving (r 3, f 2)": lambda e: optuna.pruners.SuccessiveHalvingPruner(min_resource=3),
    "hyperband (r 1, f 3)": lambda e: optuna.pruners.HyperbandPruner(1, e, 3),
    "hyperband (r 2, f 2)": lambda e: optuna.pruners.HyperbandPruner(2, e, 2),
}
Curve = list[tuple[int, float]]


def arm_study(arm: str, seed: int, n_trials: int, home: Path, extra: list[str]) -> tuple[StudySpec, RunOptions]:
    """The arm's study and where it runs, with a budget of ``n_trials``."""
    sampler, pruner, enqueue, more = ARMS[arm]
    name = f"eff-{list(ARMS).index(arm)}-{seed}"
    overrides = [f"seed={seed}", f"name={name}"]
    for key, value in (("sampler", sampler), ("pruner", pruner)):
        overrides += [f"{key}={value}"] if value else []
    overrides += [o for o in (enqueue, more) if o]
    spec = load_study("lr-sweep", overrides + extra)
    options = RunOptions(
        storage_url=f"sqlite:///{home}/{name}.db", artifacts=home / name, n_trials=n_trials, timeout=None, quiet=True
    )
    return spec, options


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def run_arm(arm: str, seed: int, n_trials: int, home: Path, extra: list[str]) -> tuple[list[FrozenTrial], float]:
    """The arm's finished trials, and the epochs its range test cost (0 without one)."""
    spec, options = arm_study(arm, seed, n_trials, home, extra)
    if ARMS[arm][3] == WARM:  # the easy demo's study first, in the same storage; its trials are not counted
        same_training = [o for o in extra if not o.startswith("data.")]  # new data, the same sweep
        easy = load_study("lr-sweep", [*same_training, f"seed={seed}", "name=easy"])
        run_here(easy, RunOptions(options.storage_url, home / "easy", max(3, n_trials // 2), None, quiet=True))
    study = run_here(spec, options)
    return finished(study), lr_find_epochs(study, spec)


def default_needs(seed: int, n_trials: int, home: Path, extra: list[str], mark: float, beyond: int) -> Curve:
    """The default study's curve until it reaches ``mark``: where its budget's trials never do, the
    same study goes on, 4 trials at a time, for at most ``beyond`` more trials."""
    spec, options = arm_study("default study", seed, n_trials, home, extra)
    budget = n_trials
    while True:
        points = curve(finished(optuna.load_study(study_name=spec.name, storage=options.storage_url)))
        if epochs_to(points, mark) != float("inf") or budget >= n_trials + beyond:
            return points
        budget = min(budget + 4, n_trials + beyond)
        run_here(spec, dataclasses.replace(options, n_trials=budget))


def lr_find_epochs(study: optuna.Study, spec) -> float:
    """A range test's steps over the optimizer steps of one epoch (one a micro-batch, as it runs)."""
    found = lr_find.recorded(study.user_attrs)
    if not found:
        return 0.0
    from training import prepare_data

    batches = -(-len(prepare_data(spec.data, spec.seed).train_idx) // spec.train.batch_size)
    return found["steps"] / batches


def one_image(spec) -> float:
    """How much one validation image of the smallest class, predicted as the largest, moves the
    macro-F1 of otherwise perfect predictions: the setting's resolution."""
    from sklearn.metrics import f1_score

    from training import prepare_data

    data = prepare_data(spec.data, spec.seed)
    labels = data.decoded.labels[data.val_idx]
    counts = np.bincount(labels, minlength=data.num_classes)
    predicted = labels.copy()
    predicted[np.flatnonzero(labels == np.argmin(counts))[0]] = np.argmax(counts)
    return 1.0 - float(f1_score(labels, predicted, average="macro"))


def curve(trials: list[FrozenTrial], spent: float = 0.0) -> Curve:
    """(epochs spent, best F1 so far) after every epoch, trials in the order they ran, from ``spent``
    epochs already spent (a range test's)."""
    points, best = [], 0.0
    for trial in sorted(trials, key=lambda t: t.number):
        for step in sorted(trial.intermediate_values):
            spent += 1
            best = max(best, trial.intermediate_values[step])
            points.append((spent, best))
    return points


def epochs_to(points: Curve, target: float) -> float:
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


def against_default(
    curves: dict[str, dict[int, Curve]], marks: dict[int, float], seeds: list[int], needs: dict[int, Curve]
) -> None:
    """Each arm against the default study, the issue's target: the epochs each needed to the 98%
    mark, summed over seeds, and the best F1 found in the budget. The default's epochs come from its
    study run on past the budget (``needs``); where even that never reached the mark, it is counted
    as needing all it trained (less than it needs). An arm that never reached it fails the target."""
    reached = {s: epochs_to(needs[s], marks[s]) for s in seeds}
    needed = [min(reached[s], needs[s][-1][0]) for s in seeds]
    past = [f"{n:.0f}" + ("+" if reached[s] == float("inf") else "") for s, n in zip(seeds, needed)]
    print(f"default study, run on past its budget: epochs to 98% by seed {', '.join(past)} (+: never, all it trained)")
    base = sum(needed)
    for arm in curves:
        if arm == "default study":
            continue
        ratio = sum(epochs_to(curves[arm][s], marks[s]) for s in seeds) / base
        lower = statistics.mean(curves[arm][s][-1][1] - curves["default study"][s][-1][1] for s in seeds)
        print(f"{arm} / default study: epochs to 98% {ratio:.3f}, best F1 {lower:+.3f}; "
              "target (at most 0.50, at least -0.005): "
              f"{'met' if ratio <= 0.5 and lower >= -0.005 else 'not met'}")  # fmt: skip


def replay(curves: list[list[float]], order: np.ndarray, pruner: optuna.pruners.BasePruner) -> tuple[Curve, list[int]]:
    """What ``pruner`` does to these trials in this order: the best-so-far curve and the pruned trials."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    pruned = []
    for i in order:
        trial, values = study.ask(), curves[i]
        for step, value in enumerate(values):
            trial.report(value, step)
            if step < len(values) - 1 and trial.should_prune():
                pruned.append(int(i))
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            study.tell(trial, max(values))
    return curve(study.trials), pruned


def compare_pruners(random_trials: list[FrozenTrial], n_trials: int, epochs: int, orders: int = 200) -> None:
    """Each candidate on the random arm's trials (all seeds pooled), in ``orders`` random orders."""
    curves = [[t.intermediate_values[s] for s in sorted(t.intermediate_values)] for t in random_trials]
    curves = [c for c in curves if len(c) == epochs]
    rng = np.random.default_rng(0)
    drawn = [rng.choice(len(curves), min(n_trials, len(curves)), replace=False) for _ in range(orders)]
    unpruned = [replay(curves, order, optuna.pruners.NopPruner())[0] for order in drawn]
    print(f"\npruner candidates, replayed on the random arm's {len(curves)} trials in {orders} orders of {n_trials}")
    header = f"{'pruner':32} {'pruned':>7} {'epochs':>7} {'to 98% vs none':>15} {'missed 98%':>11}"
    print(f"{header} {'best vs none':>13} {'lost best':>10}")
    for name, make in CANDIDATES.items():
        share, spent, to98, base98, delta, lost = [], [], [], [], [], 0
        for order, base in zip(drawn, unpruned):
            points, pruned = replay(curves, order, make(epochs))
            mark = 0.98 * base[-1][1]
            share.append(len(pruned) / len(order))
            spent.append(points[-1][0])
            to98.append(epochs_to(points, mark))
            base98.append(epochs_to(base, mark))
            delta.append(points[-1][1] - base[-1][1])
            lost += any(max(curves[i]) > points[-1][1] for i in pruned)  # a pruned trial would have won
        reached = [(a, b) for a, b in zip(to98, base98) if a != float("inf")]
        ratio = sum(a for a, _ in reached) / sum(b for _, b in reached) if reached else float("inf")
        print(
            f"{name:32} {np.mean(share):>7.0%} {np.mean(spent):>7.1f} {ratio:>15.2f}"
            f" {1 - len(reached) / orders:>11.0%} {np.mean(delta):>+13.4f} {lost / orders:>10.0%}"
        )
    print("to 98% vs none: epochs to the mark over the orders that reached it; missed 98%: orders that never did")
    print("lost best: orders in which a pruned trial would have finished above the best that was kept")


def check_pruned(pruned_arm: list[FrozenTrial], unpruned_arm: list[FrozenTrial]) -> tuple[int, int]:
    """Pruned trials with an unpruned twin (same parameters), and how many of those would have won."""
    finals = {tuple(sorted(t.params.items())): t.value for t in unpruned_arm if t.state == TrialState.COMPLETE}
    best_kept = max((t.value for t in pruned_arm if t.state == TrialState.COMPLETE), default=0.0)
    keys = [tuple(sorted(t.params.items())) for t in pruned_arm if t.state == TrialState.PRUNED]
    twins = [finals[key] for key in keys if key in finals]
    return len(twins), sum(value > best_kept for value in twins)


def plot(curves: dict[str, dict[int, Curve]], marks: dict[int, float], seeds: list[int], out: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5 * len(seeds), 4), layout="tight")
    FigureCanvasAgg(figure)
    for k, seed in enumerate(seeds):
        ax = figure.add_subplot(1, len(seeds), k + 1)
        for arm, by_seed in curves.items():
            xs, ys = zip(*by_seed[seed])
            ax.step(xs, ys, where="post", label=arm)
        ax.axhline(marks[seed], color="grey", linestyle=":", label="98% of best")
        ax.set_ylim(0.5, 1.0)
        ax.set_xlabel("epochs spent")
        ax.set_ylabel("best validation macro-F1 so far")
        ax.set_title(f"seed {seed}")
        ax.legend(fontsize=7)
    figure.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-trials", type=int, default=16)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--out", default="search_efficiency.png")
    parser.add_argument("--set", action="append", default=[], help="a study override for every arm")
    parser.add_argument("--beyond", type=int, default=32, help="more trials for a default study short of the mark")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    shipped = load_study("lr-sweep", args.set)
    print(f"study lr-sweep: sampler {shipped.sampler.name} {shipped.sampler.options}, "
          f"pruner {shipped.pruner.name} {shipped.pruner.options}, {len(shipped.enqueue)} enqueued")  # fmt: skip
    print(f"one validation image moves macro-F1 by up to {one_image(shipped):.4f} (seed {shipped.seed})")

    results: dict[str, dict[int, list[FrozenTrial]]] = {arm: {} for arm in args.arms}
    extra_epochs: dict[str, dict[int, float]] = {arm: {} for arm in args.arms}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for arm in args.arms:
                results[arm][seed], extra_epochs[arm][seed] = run_arm(arm, seed, args.n_trials, Path(tmp), args.set)
                print(f"seed {seed} {arm}: done", flush=True)
        curves = {a: {s: curve(t, extra_epochs[a][s]) for s, t in by_seed.items()} for a, by_seed in results.items()}
        marks = {s: 0.98 * max(curves[arm][s][-1][1] for arm in args.arms) for s in args.seeds}
        if "default study" in args.arms:  # what the target divides by: the epochs it needs, past its budget
            needs = {s: default_needs(s, args.n_trials, Path(tmp), args.set, marks[s], args.beyond) for s in args.seeds}
    print(f"\n{args.n_trials} trials per arm, seeds {args.seeds}; mean ± spread over seeds")
    print(f"{'arm':22} {'best F1':>15} {'epochs':>11} {'epochs to 98%':>22} {'pruned early':>13}")
    to98: dict[str, list[float]] = {}
    for arm in args.arms:
        best = [curves[arm][s][-1][1] for s in args.seeds]
        epochs = [float(curves[arm][s][-1][0]) for s in args.seeds]
        to98[arm] = [float(epochs_to(curves[arm][s], marks[s])) for s in args.seeds]
        pruned = [sum(t.state == TrialState.PRUNED for t in results[arm][s]) / len(results[arm][s]) for s in args.seeds]
        print(
            f"{arm:22} {summary(best):>15} {summary(epochs):>11} {summary(to98[arm]):>22}"
            f" {statistics.mean(pruned):>12.0%}"
        )
    if "random, no pruning" in results:  # does the setting separate search from luck?
        finals = [[t.value for t in results["random, no pruning"][s] if t.value is not None] for s in args.seeds]
        spreads = [max(f) - min(f) for f in finals]
        print(f"final macro-F1 across the space (random arm): spread {summary(spreads)} (max - min of its trials)")
    if "default study" in results:
        queued = [max(t.value or 0.0 for t in sorted(results["default study"][s], key=lambda t: t.number)[:2])
                  for s in args.seeds]  # fmt: skip
        best_any = [max(curves[arm][s][-1][1] for arm in args.arms) for s in args.seeds]
        print(f"the study's queued configurations: best {summary(queued)} against {summary(best_any)} by any arm")
    baseline = "random, no pruning"
    if baseline in to98 and all(v != float("inf") for v in to98[baseline]):
        for arm in args.arms:
            if arm != baseline and all(v != float("inf") for v in to98[arm]):
                ratio = statistics.mean(to98[arm]) / statistics.mean(to98[baseline])
                print(f"epochs to 98%, {arm} / {baseline}: {ratio:.2f}")
    if "default study" in results:
        against_default(curves, marks, args.seeds, needs)
    if "tpe, no pruning" in results:
        for arm in ("tpe + pruner, blind", "default study"):
            if arm in results:
                checks = [check_pruned(results[arm][s], results["tpe, no pruning"][s]) for s in args.seeds]
                print(f"{arm}: {sum(c[0] for c in checks)} pruned trials have an unpruned twin; "
                      f"{sum(c[1] for c in checks)} of them would have finished above the arm's best")  # fmt: skip
    if baseline in results:
        pooled = [t for s in args.seeds for t in results[baseline][s]]
        compare_pruners(pooled, args.n_trials, shipped.trial_config({}, None).epochs)
    plot(curves, marks, args.seeds, args.out)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
