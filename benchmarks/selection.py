"""Is the model a study hands over good on data no search saw? Cross-validation and out-of-fold
ensembles against today's default, judged on a held-out test part (CPU).

Each data setting is cut once, before any arm runs, into a search part and a test part that no arm
ever sees (the cut does not depend on the seed):

- ``digits``: the harder digits setting of ``search_efficiency.py`` (demo imbalance 6, SGD, 4
  epochs; the default arm validates on half its search part); images cut 55 / 45 by class;
- ``people``: generated competition-layout data (18 classes: mask state x gender x age band; each
  person has seven photos, ages drawn across the bands so that ages near a band's edge are hard,
  the oldest band the rarest); people cut 150 for the search, 120 for the test.

Arms, each on every seed (the study's seed: its split or folds, its sampler, its training):

- ``default``: the shipped ``lr-sweep`` study, 12 trials; hands over its best trial's checkpoint;
- ``cv``: the same with ``data.folds=5`` and fold pruning at its defaults, 6 trials (five folds
  each: at most 2.5x the default's epochs); hands over the best trial's five fold models, averaged;
- ``cv + ensemble``: the ``cv`` arm's study; hands over ``search ensemble``'s pick among its top 5;
- ``default + confirm``: the ``default`` arm's study with ``confirm: {top: 3, seeds: 2}``: once its
  12 trials are done, its three leading configurations are trained again with 2 further seeds each
  (each run on its own split), until the top three by mean all are; hands over the checkpoint of the
  configuration with the best mean. The ``default`` arm is read from the same study's 12 trials.

Per arm: the held-out test macro-F1 of what it hands over (mean ± sd over seeds); its regret, the
reference's test macro-F1 less the arm's, where the reference is the configuration with the best test
macro-F1 among every complete trial of every arm, retrained on the whole search part with each seed
(its mean); its optimism, the figure it reported for the model less the model's test macro-F1; the
Spearman correlation, across its complete trials, of the score it ranked by against the same
trial's test macro-F1; and the epochs it trained. Every arm's models are scored on the test part
only after every arm has run. The seeds used to build this benchmark are 0-4; nothing here was
chosen by its results.

    python benchmarks/selection.py [--settings digits people] [--seeds 0 1 2 3 4] [--trials 12 6] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from stopping import stop_everything_on_sigterm

from search.ensemble import out_of_fold, select
from search.handover import fold_means
from search.ranking import configurations, confirms
from search.record import TrialRecord
from search.run.lifecycle import run_here
from search.run.options import RunOptions
from search.store import AtomicArtifactStore
from search.study import load_study

TEST_SHARE = 0.45  # digits: the held-out part, so that one test image moves macro-F1 by less than 0.005
SEARCH_PEOPLE, TEST_PEOPLE = 150, 120  # people: the two parts
STEMS = ["mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"]
DEFAULT_TRIALS, CV_TRIALS, FOLDS, ENSEMBLE_TOP = 12, 6, 5, 5
CONFIRM = "confirm={top: 3, seeds: 2}"
TRIALS = {"default": DEFAULT_TRIALS, "cv": CV_TRIALS}
KEEP_ALL = "checkpoints.keep_top_k=1000"  # every complete trial keeps its models: each is scored on the test part
SETTINGS = {
    "digits": ["data.source=folder", "data.val_ratio=0.5", "train.epochs=4", "train.optimizer.name=sgd"],
    "people": ["data.source=competition", "data.image_size=32", "data.val_ratio=0.25", "train.epochs=4"],
}


# --- the data, cut once ----------------------------------------------------------------------


def cut_digits(folder: Path) -> tuple[Path, Path]:
    """The hard demo's images, cut once by class into search/ and test/ folders of class subfolders."""
    from sklearn.model_selection import train_test_split

    from training.data.sources import write_demo

    demo = write_demo(folder / "demo", 6)
    files = sorted(p for p in demo.rglob("*.png"))
    classes = [p.parent.name for p in files]
    search, test = train_test_split(files, test_size=TEST_SHARE, stratify=classes, random_state=1234)
    for part, chosen in (("search", search), ("test", test)):
        for path in chosen:
            (folder / part / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / part / path.parent.name / path.name)
    return folder / "search", folder / "test"


def write_people(root: Path, first: int, count: int, rng: np.random.Generator) -> Path:
    """``count`` generated people in the competition's layout, seven 32x32 photos each.

    The mask is a block over the lower face (its colour by mask, only the mouth for an incorrect
    mask, skin for none); gender shades the hair; age greys the hair and adds texture, in proportion
    to the age, so a face near a band's edge looks like the other band's. Each person has their own
    skin, hair and lighting, and every pixel its own noise."""
    rows = ["id,gender,race,age,path"]
    masks = rng.uniform(40, 220, (5, 3))
    for person in range(first, first + count):
        gender = "female" if rng.random() < 0.6 else "male"
        band = rng.choice(3, p=[0.45, 0.35, 0.20])
        age = int(rng.integers(*((18, 30), (30, 60), (60, 75))[band]))
        folder = f"{person:06d}_{gender}_Asian_{age}"
        rows.append(f"{person:06d},{gender},Asian,{age},{folder}")
        skin = rng.uniform(130, 210) + rng.normal(0, 10, 3)
        old = (age - 18) / 57
        hair = (55 if gender == "male" else 95) + 120 * old + rng.normal(0, 25)
        light = rng.uniform(0.8, 1.2)
        for k, stem in enumerate(STEMS):
            image = np.tile(skin, (32, 32, 1))
            image[:8] = hair
            image += rng.normal(0, 30 * old + 5, (32, 32, 1))  # texture, with age
            if stem.startswith("mask"):
                image[16:28, 6:26] = masks[k] + rng.normal(0, 15, 3)
            elif stem == "incorrect_mask":
                image[22:28, 6:26] = masks[k % 5] + rng.normal(0, 15, 3)
            image = image * light + rng.normal(0, 22, (32, 32, 3))
            path = root / "images" / folder / f"{stem}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.clip(image, 0, 255).astype(np.uint8))
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


def cut_people(folder: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(1234)
    return write_people(folder / "search", 0, SEARCH_PEOPLE, rng), write_people(
        folder / "test", 10_000, TEST_PEOPLE, rng
    )


def test_part(setting: str, root: Path) -> tuple[list[str], list[str]]:
    """The test images and their true class names."""
    from training.config import DataConfig
    from training.data.listing import Dataset
    from training.data.sources import load_source

    source = "folder" if setting == "digits" else "competition"
    listed: Dataset = load_source(DataConfig(source=source, root=root))
    return list(listed.paths), [listed.class_names[label] for label in listed.labels]


def one_test_image(names: list[str]) -> float:
    """How much one test image of the rarest class, taken for the largest, moves macro-F1."""
    from sklearn.metrics import f1_score

    classes = sorted(set(names))
    labels = np.array([classes.index(n) for n in names])
    counts = np.bincount(labels, minlength=len(classes))
    predicted = labels.copy()
    predicted[np.flatnonzero(labels == np.argmin(counts))[0]] = np.argmax(counts)
    return 1.0 - float(f1_score(labels, predicted, average="macro"))


# --- the arms --------------------------------------------------------------------------------


@dataclass
class Handed:
    """What an arm handed over on one seed, and what it knew."""

    models: list[Path]
    weights: list[float] | None
    reported: float
    ranked: list[tuple[float, list[Path]]]  # (the score it ranked by, that trial's models), per complete trial
    epochs: int
    configs: list[tuple[FrozenTrial, list[Path], optuna.Study]] = field(default_factory=list)


def run_study(setting: str, search_root: Path, seed: int, home: Path, name: str, more: list[str],
              n_trials: int) -> tuple[optuna.Study, AtomicArtifactStore]:  # fmt: skip
    spec = load_study("lr-sweep", [*SETTINGS[setting], f"data.root={search_root}", f"seed={seed}", f"name={name}",
                                   KEEP_ALL, *more])  # fmt: skip
    artifacts = home / "artifacts"
    study = run_here(spec, RunOptions(f"sqlite:///{home}/studies.db", artifacts, n_trials, None, quiet=True))
    return study, AtomicArtifactStore(artifacts)


def models_of(trial: FrozenTrial, artifacts: Path) -> list[Path]:
    kept = TrialRecord.of(trial)
    return [artifacts / i for i in (kept.fold_checkpoints or [kept.checkpoint_artifact])]


def epochs_of(study: optuna.Study, *, confirmation_runs: bool = True) -> int:
    """The epochs its trials trained; with ``confirmation_runs``, its confirmation runs' too."""
    trials = [t for t in study.trials if confirmation_runs or confirms(t) is None]
    return sum(t.user_attrs.get("epochs_run", 0) for t in trials if t.state != TrialState.RUNNING)


def complete(study: optuna.Study) -> list[FrozenTrial]:
    """Its complete trials of the search (no confirmation run), best value first."""
    found = (t for t in study.trials if t.state == TrialState.COMPLETE and confirms(t) is None)
    return sorted(found, key=lambda t: -t.value)


def arms_on_seed(setting: str, search_root: Path, seed: int, home: Path) -> dict[str, Handed]:
    handed = {}
    study, store = run_study(setting, search_root, seed, home, f"default-{seed}", [CONFIRM], TRIALS["default"])
    done = complete(study)
    artifacts = home / "artifacts"
    handed["default"] = Handed(models_of(done[0], artifacts), None, done[0].value,
                               [(t.value, models_of(t, artifacts)) for t in done],
                               epochs_of(study, confirmation_runs=False),
                               [(t, models_of(t, artifacts), study) for t in done])  # fmt: skip
    leaders = configurations(study.trials)  # ranked by the mean of each one's runs
    ranked_by = [(r.mean, models_of(r.trial, artifacts)) for r in leaders]
    configs = [(r.trial, models, study) for r, (_, models) in zip(leaders, ranked_by)]
    handed["default + confirm"] = Handed(ranked_by[0][1], None, leaders[0].mean, ranked_by, epochs_of(study), configs)
    study, store = run_study(setting, search_root, seed, home, f"cv-{seed}", [f"data.folds={FOLDS}"], TRIALS["cv"])
    done = complete(study)
    handed["cv"] = Handed(models_of(done[0], artifacts), None, done[0].value,
                          [(t.value, models_of(t, artifacts)) for t in done], epochs_of(study),
                          [(t, models_of(t, artifacts), study) for t in done])  # fmt: skip
    leaders = done[:ENSEMBLE_TOP]
    kept = {t.number: out_of_fold(store, t) for t in leaders}
    labels = next(iter(kept.values()))[1]
    chosen = select({n: probs for n, (probs, _) in kept.items()}, labels, "macro_f1", rounds=20)
    by_number = {t.number: t for t in leaders}
    models, weights = [], []
    for number in chosen.weights:
        files = models_of(by_number[number], artifacts)
        models += files
        weights += [chosen.share(number) / len(files)] * len(files)
    handed["cv + ensemble"] = Handed(models, weights, chosen.value, [], epochs_of(study))
    return handed


# --- scoring on the test part ----------------------------------------------------------------


class TestScorer:
    """Test macro-F1 of checkpoints, each checkpoint's probabilities computed once."""

    def __init__(self, paths: list[str], names: list[str]) -> None:
        self.paths, self.names, self.probs = paths, names, {}

    def _probs(self, checkpoint: Path) -> tuple[np.ndarray, list[str]]:
        from training.predict import predict_files

        if checkpoint not in self.probs:
            probs, metas = predict_files([checkpoint], self.paths, 256)
            self.probs[checkpoint] = (probs, list(metas[0]["class_names"]))
        return self.probs[checkpoint]

    def macro_f1(self, checkpoints: list[Path], weights: list[float] | None = None) -> float:
        from sklearn.metrics import f1_score

        weights = weights or [1 / len(checkpoints)] * len(checkpoints)
        total, classes = 0.0, None
        for checkpoint, weight in zip(checkpoints, weights):
            probs, classes = self._probs(checkpoint)
            total = total + weight * probs
        truth = np.array([classes.index(n) for n in self.names])
        return float(f1_score(truth, np.argmax(total, axis=1), average="macro", labels=range(len(classes))))


def reference(setting: str, scorer: TestScorer, runs: list[dict[str, Handed]], seeds: list[int],
              home: Path) -> tuple[float, str]:  # fmt: skip
    """The configuration with the best test macro-F1 among every complete trial of every arm,
    retrained on the whole search part with each seed: its mean test macro-F1, and its params."""
    from training import TrainConfig, train_on_all_data

    trials = [(scorer.macro_f1(models), trial, study) for run in runs for arm in run.values()
              for trial, models, study in arm.configs]  # fmt: skip
    _, best, study = max(trials, key=lambda found: found[0])
    config = TrainConfig.model_validate_json(TrialRecord.of(best).config)
    folds = TrialRecord.of(best).fold_values is not None
    values = fold_means(best) if folds else [best.intermediate_values[e] for e in sorted(best.intermediate_values)]
    config = config.model_copy(update={"data": config.data.model_copy(update={"folds": 1})})
    scores = []
    for seed in seeds:
        out = home / f"reference-{seed}.safetensors"
        train_on_all_data(config.model_copy(update={"seed": seed}), values, out)
        scores.append(scorer.macro_f1([out]))
    return statistics.mean(scores), json.dumps(best.params)


def spearman(pairs: list[tuple[float, float]]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic) if len(pairs) > 2 else float("nan")


def mean_sd(values: list[float]) -> str:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return "-"
    sd = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return f"{statistics.mean(finite):.3f} ± {sd:.3f}"


def measure(setting: str, seeds: list[int], home: Path) -> None:
    started = time.monotonic()
    search_root, test_root = (cut_digits if setting == "digits" else cut_people)(home / "data")
    paths, names = test_part(setting, test_root)
    print(f"\n## {setting}: {len(paths)} test images; one test image of the rarest class moves test macro-F1 "
          f"by {one_test_image(names):.4f}", flush=True)  # fmt: skip
    runs = []
    for seed in seeds:
        runs.append(arms_on_seed(setting, search_root, seed, home / f"seed-{seed}"))
        print(f"seed {seed} searched ({time.monotonic() - started:.0f} s)", flush=True)
    scorer = TestScorer(paths, names)
    target, params = reference(setting, scorer, runs, seeds, home)
    print(f"reference: {params}, retrained on the search part: test macro-F1 {target:.3f} (mean of seeds)")
    lines: list[str] = []
    print("\n| arm | test macro-F1 | regret | optimism | Spearman (rank score vs test) | epochs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for arm in runs[0]:
        tests = [scorer.macro_f1(run[arm].models, run[arm].weights) for run in runs]
        optimism = [run[arm].reported - test for run, test in zip(runs, tests)]
        rho = [spearman([(score, scorer.macro_f1(models)) for score, models in run[arm].ranked]) for run in runs]
        epochs = [run[arm].epochs for run in runs]
        each = ", ".join(f"{test:.3f} ({run[arm].reported:.3f})" for run, test in zip(runs, tests))
        lines.append(f"  {arm}: test (reported) by seed {', '.join(map(str, seeds))}: {each}")
        print(f"| {arm} | {mean_sd(tests)} | {target - statistics.mean(tests):+.3f} | {mean_sd(optimism)} | "
              f"{mean_sd(rho)} | {statistics.mean(epochs):.0f} |", flush=True)  # fmt: skip
    print("\n".join(["", *lines]))
    print(f"({time.monotonic() - started:.0f} s)")


def main() -> None:
    stop_everything_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--trials", nargs=2, type=int, default=[DEFAULT_TRIALS, CV_TRIALS], metavar=("DEFAULT", "CV"),
                        help="trials of the default arm and of the cross-validated one")  # fmt: skip
    parser.add_argument("--out", type=Path, help="keep the studies and models here (default: a temporary folder)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    TRIALS.update(default=args.trials[0], cv=args.trials[1])
    for setting in args.settings:
        with tempfile.TemporaryDirectory() as temporary:
            home = (args.out or Path(temporary)) / setting
            home.mkdir(parents=True, exist_ok=True)
            measure(setting, args.seeds, home)


if __name__ == "__main__":
    main()
