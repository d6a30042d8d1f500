"""`search run` end to end on the demo data and a real SQLite file: what a run records, what it
keeps, and what a later run of the same study may change."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import optuna
import pytest
import timm
from optuna.trial import TrialState
from safetensors.torch import load_file, save_file

from tests.conftest import FOUR, TINY, optuna_cli, search_here, write_image
from training.data import cache as decode_cache
from training.data import prepare


def test_run_completes_prunes_and_samples_the_four_names(finished_study):
    study = optuna.load_study(study_name="lr-sweep", storage=finished_study["url"])
    states = [t.state for t in study.trials]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == 5
    assert TrialState.COMPLETE in states and TrialState.PRUNED in states
    assert FOUR <= {name for t in study.trials for name in t.params}
    best = study.best_trial
    for key in (
        "macro_f1",
        "accuracy",
        "macro_precision",
        "macro_recall",
        "per_class_f1",
        "confusion_matrix",
        "best_epoch",
        "epochs_run",
        "train_images_per_second",
        "device",
        "seed",
        "checkpoint_artifact",
    ):
        assert key in best.user_attrs, key
    assert best.user_attrs["macro_f1"] == best.value
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert all(t.user_attrs["epochs_run"] < 3 for t in pruned)  # stopped at once
    assert sorted(best.intermediate_values) == list(range(best.user_attrs["epochs_run"]))
    assert json.loads(study.user_attrs["spec"])["name"] == "lr-sweep"


def test_retention_keeps_only_the_top_k_checkpoints(finished_study):
    study = optuna.load_study(study_name="lr-sweep", storage=finished_study["url"])
    store = finished_study["home"] / "artifacts"
    checkpoints = {t.number: t.user_attrs.get("checkpoint_artifact") for t in study.trials}
    kept = [n for n, a in checkpoints.items() if a and (store / a).is_file()]
    assert kept == [study.best_trial.number]  # keep_top_k=1
    pictures = [p for p in store.iterdir() if p.read_bytes()[:4] == b"\x89PNG"]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(pictures) == 2 * len(complete)  # confusion matrix and per-class F1; none for pruned trials
    assert not (finished_study["home"] / "work").exists()  # the worker's scratch folder, and its parents, gone


@pytest.mark.slow
def test_plain_optuna_cli_reads_the_study(finished_study):
    trials = json.loads(
        optuna_cli("trials", "--study-name", "lr-sweep", "--storage", finished_study["url"], "-f", "json")
    )
    assert len(trials) == 5 and {"params", "state", "user_attrs"} <= set(trials[0])
    best = json.loads(
        optuna_cli("best-trial", "--study-name", "lr-sweep", "--storage", finished_study["url"], "-f", "json")
    )
    study = optuna.load_study(study_name="lr-sweep", storage=finished_study["url"])
    assert best["number"] == study.best_trial.number and FOUR <= set(best["params"])


def test_running_again_with_another_model_data_or_training_is_refused_before_a_trial(finished_study):
    study = optuna.load_study(study_name="lr-sweep", storage=finished_study["url"])
    before = len(study.trials)
    changed = search_here("run", *finished_study["args"], "--set", "train.epochs=4", "--set", "data.image_size=20",
                          env=finished_study["env"])  # fmt: skip
    assert changed.returncode == 2, changed.stderr
    assert "was made with data.image_size=[16, 16], train.epochs=3; this run has data.image_size=[20, 20], " \
           "train.epochs=4" in changed.stderr  # fmt: skip
    assert "(--set name=NEW_NAME), or delete this one first (search delete --study lr-sweep)" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1
    augment = ["--set", "train.augment.train=[{name: HorizontalFlip, p: 0.5}, {name: Affine, rotate: [-10, 10]}]"]
    long = search_here("run", *finished_study["args"], *augment, env=finished_study["env"])
    assert long.returncode == 2  # a long value clipped to 60 characters, the line still one line
    clipped = re.search(r"this run has train\.augment\.train=(\[\{'name': 'Horiz.*?\.\.\.), and", long.stderr)
    assert clipped and len(clipped.group(1)) == 60, long.stderr
    # where it runs, how fast, and the study's bookkeeping may change: nothing a trial's F1 depends on
    same = ["--set", "train.device=cpu", "--set", "train.eval_batch_size=7", "--set", "data.decode_threads=1",
            "--set", "checkpoints.keep_top_k=2", "--set", "pruner={name: none}", "--n-trials", "1"]  # fmt: skip
    verbose = [a for a in finished_study["args"] if a != "--quiet"]
    again = search_here("run", *verbose, *same, env=finished_study["env"])
    assert (
        again.returncode == 0
        and len(optuna.load_study(study_name="lr-sweep", storage=finished_study["url"]).trials) == before
    )
    assert f"the study has {before} finished trials of the 1 asked for: nothing to run" in again.stderr, again.stderr


@pytest.mark.slow
def test_running_again_on_other_images_or_weights_is_refused_and_the_same_files_elsewhere_are_not(
    tmp_path, folder_dataset
):
    weights = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}, weights)
    env = {"SEARCH_HOME": str(tmp_path / "home")}

    def run(root: Path, weights_file: Path) -> subprocess.CompletedProcess:
        prepare._PREPARED.clear()  # each run a new process: the images are listed again
        decode_cache._IN_PROCESS.clear()
        return search_here(
            "run", "--study", "lr-sweep", "--n-trials", "1", *TINY, "--set", "pruner={name: none}",
            "--set", "enqueue=[]", "--set", "data.source=folder", "--set", f"data.root={root}",
            "--set", f"model.weights={weights_file}", env=env,
        )  # fmt: skip

    assert run(folder_dataset, weights).returncode == 0
    url = f"sqlite:///{tmp_path / 'home'}/studies.db"
    recorded = json.loads(optuna.load_study(study_name="lr-sweep", storage=url).user_attrs["inputs"])
    assert recorded["images"] == 42 and recorded["classes"] == 3
    assert recorded["weights"] == hashlib.sha256(weights.read_bytes()).hexdigest()

    # the same files under another root (copied: new times), the weights file under another name
    elsewhere, same_weights = tmp_path / "elsewhere", tmp_path / "copy.safetensors"
    shutil.copytree(folder_dataset, elsewhere)
    shutil.copyfile(weights, same_weights)
    assert run(elsewhere, same_weights).returncode == 0

    other = load_file(weights)
    other["fc.bias"] = other["fc.bias"] + 1.0
    save_file(other, same_weights)
    changed = run(elsewhere, same_weights)
    assert changed.returncode == 2 and len(changed.stderr.strip().splitlines()) == 1, changed.stderr
    assert f"was trained from the weights file of sha256 {recorded['weights'][:12]}...; this run's model.weights " \
           "is of sha256" in changed.stderr  # fmt: skip

    write_image(elsewhere / "fox" / "new.png", np.random.default_rng(5), (30, 30, 250))
    added = run(elsewhere, weights)
    assert added.returncode == 2, added.stderr
    assert f"was trained on 42 images in 3 classes; data.root {elsewhere} now holds 43 images in 3 classes, and " \
           "new trials would not compare" in added.stderr  # fmt: skip

    (folder_dataset / "cat" / "0.jpg").rename(folder_dataset / "dog" / "cat-0.jpg")  # one image relabelled
    relabelled = run(folder_dataset, weights)
    assert relabelled.returncode == 2, relabelled.stderr
    assert "now holds 42 images in 3 classes, but other files, labels or sizes" in relabelled.stderr
    assert "(--set name=NEW_NAME), or delete this one first (search delete --study lr-sweep)" in relabelled.stderr
    # training a trial's recipe again on the changed images is refused too, before a file is written
    out = tmp_path / "final.safetensors"
    final = search_here("export", "--study", "lr-sweep", "--all-data", "--out", str(out), env=env)
    assert final.returncode == 2 and "but other files, labels or sizes" in final.stderr and not out.exists()
    assert [t.state for t in optuna.load_study(study_name="lr-sweep", storage=url).trials] == [TrialState.COMPLETE]


@pytest.mark.slow
def test_the_demo_written_by_another_png_encoder_is_the_same_data_and_a_relabelled_one_is_not(tmp_path):
    """Each machine writes the demo's PNG files itself; another OpenCV's encoder gives the same pixels in
    files of other sizes, which must not read as other data when machines share a demo study."""
    cache, home = tmp_path / "cache", tmp_path / "home"
    env = {"SEARCH_HOME": str(home), "SEARCH_CACHE_DIR": str(cache)}
    url = f"sqlite:///{home}/studies.db"

    def run(trials: int) -> subprocess.CompletedProcess:
        prepare._PREPARED.clear()  # each run a new process: the images are listed again
        decode_cache._IN_PROCESS.clear()
        return search_here(
            "run", "--study", "lr-sweep", "--n-trials", str(trials), *TINY, "--set", "pruner={name: none}",
            "--set", "enqueue=[]", "--set", "train.epochs=1", env=env,
        )  # fmt: skip

    def recorded() -> dict:
        return json.loads(optuna.load_study(study_name="lr-sweep", storage=url).user_attrs["inputs"])

    assert run(1).returncode == 0
    first = recorded()
    assert first["sizes"] is False and first["images"] > 100 and first["classes"] == 10
    files = sorted(cache.glob("demo-digits-*/digit_*/*.png"))
    sizes = [f.stat().st_size for f in files]
    for file in files:  # the other machine's encoder: same pixels, other bytes
        assert cv2.imwrite(str(file), cv2.imread(str(file), cv2.IMREAD_UNCHANGED), [cv2.IMWRITE_PNG_COMPRESSION, 0])
    assert all(f.stat().st_size != size for f, size in zip(files, sizes))
    assert run(2).returncode == 0 and recorded() == first

    files[0].rename(files[0].parent.parent / "digit_9" / f"from-{files[0].parent.name}.png")  # one image relabelled
    relabelled = run(3)
    assert relabelled.returncode == 2 and len(relabelled.stderr.strip().splitlines()) == 1, relabelled.stderr
    assert f"the demo data now holds {first['images']} images in 10 classes, but other files" in relabelled.stderr
    trials = optuna.load_study(study_name="lr-sweep", storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2  # one per run that was let through


@pytest.mark.slow
def test_running_again_continues_the_same_study(own_finished_study):
    args = [a if a != "5" else "7" for a in own_finished_study["args"]]
    reordered = [  # the study file edited: the same choices in another order are the same space
        "--set", "space.loss={f1: {}, label_smoothing: {smoothing: {low: 0.02, high: 0.2}}, "
                 "focal: {focal_gamma: {low: 0.5, high: 3.0}}, cross_entropy: {}}",
        "--set", "space.accumulation_steps={choices: [8, 4, 2, 1]}",
    ]  # fmt: skip
    again = search_here("run", *args, *reordered, env=own_finished_study["env"])
    assert again.returncode == 0, again.stderr[-2000:]
    study = optuna.load_study(study_name="lr-sweep", storage=own_finished_study["url"])
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 7 and len({t.number for t in study.trials}) == len(study.trials)
    # enqueued configurations are not queued a second time
    assert sum(t.params.get("lr") == 0.01 and t.params.get("scheduler") == "cosine" for t in study.trials) == 1
