"""End to end through the real ``search`` command on the demo data, a real SQLite file and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import optuna
import pytest
import sqlalchemy
import timm
import torch
from conftest import postgres_url, search_here, write_image
from optuna.trial import TrialState
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from search.store import open_storage
from search.study import load_study
from training.checkpoint import read_meta
from training.data import cache as decode_cache
from training.data import prepare

FOUR = {"lr", "scheduler", "loss", "accumulation_steps"}
TINY = [
    "--set", "model.name=test_resnet",
    "--set", "data.image_size=16",
    "--set", "train.epochs=3",
    "--set", "train.batch_size=32",
    "--quiet",
]  # fmt: skip
MUST_PRUNE = [
    "--set", "pruner={name: percentile, percentile: 90.0, n_startup_trials: 1, n_warmup_steps: 0}",
    "--set", "enqueue=[{lr: 0.01, scheduler: cosine, loss: cross_entropy, accumulation_steps: 1}, "
    "{lr: 0.0003, scheduler: step, step_size: 1, step_gamma: 0.2, loss: f1, accumulation_steps: 8}]",
]  # fmt: skip


def search(
    *args: str, env: dict | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "search", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"search {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def optuna_cli(*args: str) -> str:
    command = Path(sys.executable).parent / "optuna"
    out = subprocess.run([str(command), *args], capture_output=True, text=True, check=True)
    return out.stdout


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """One small lr-sweep run shared by the tests of this module (it is the slow part)."""
    home = tmp_path_factory.mktemp("home")
    env = {"SEARCH_HOME": str(home), "SEARCH_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "cache")}
    args = ["--study", "lr-sweep", "--n-trials", "5", *TINY, *MUST_PRUNE, "--set", "checkpoints.keep_top_k=1"]
    run = search("run", *args, env=env)
    return {"home": home, "env": env, "args": args, "run": run, "url": f"sqlite:///{home}/studies.db"}


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


def test_status_best_and_studies_commands(finished_study):
    env = finished_study["env"]
    status = search_here("status", "--study", "lr-sweep", env=env).stdout
    assert "complete" in status and "pruned" in status and "best: trial" in status
    setup = r"test_resnet, demo data \(\d+ images, 10 classes\) at 16x16, 3 epochs of batch 32"
    assert re.match(rf"study lr-sweep: \d+ trials of {setup}\n", status), status
    best = json.loads(search_here("best", "--study", "lr-sweep", env=env).stdout)
    assert FOUR <= set(best["params"]) and best["metrics"]["macro_f1"] == best["value"]
    studies = search_here("studies", env=env).stdout.splitlines()
    best_value = optuna.load_study(study_name="lr-sweep", storage=finished_study["url"]).best_value
    assert studies[0].split()[:3] == ["study", "trials", "best"] and len(studies) == 2
    assert re.fullmatch(
        rf"lr-sweep +\d+ +{best_value:.4f}  \d{{4}}-\d\d-\d\d \d\d:\d\d  {setup}",
        studies[1],
    ), studies


def test_status_shows_the_running_trials_and_why_trials_failed(tmp_path):
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    url = f"sqlite:///{tmp_path}/studies.db"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    lr = {"lr": FloatDistribution(1e-5, 1.0, log=True)}
    for reason in ["OutOfMemoryError: CUDA out of memory", "interrupted", None, "interrupted"]:
        attrs = {"failure_reason": reason} if reason else {}
        study.add_trial(create_trial(state=TrialState.FAIL, params={"lr": 0.1}, distributions=lr, user_attrs=attrs))
    running = study.ask(lr)
    for epoch, value in enumerate([0.31, 0.52]):
        running.report(value, epoch)
    running.set_user_attr("worker", "gpu-node-3:4711")
    running.set_user_attr("config", json.dumps({"epochs": 10}))
    gone = study.ask(lr)  # its worker was killed: its last heartbeat an hour ago
    storage = open_storage(url)
    for trial in (running, gone):
        storage.record_heartbeat(trial._trial_id)
    with sqlalchemy.create_engine(url).begin() as db:
        db.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = :t WHERE trial_id = :id"),
                   {"t": datetime.now() - timedelta(hours=1), "id": gone._trial_id})  # fmt: skip
    status = search_here("status", "--study", "s", "--storage", url)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[1] == "  running 2, fail 4"
    running_line = r"  running: trial 4 on gpu-node-3:4711, 2/10 epochs, macro-F1 0.5200, for 0 min 0\d s"
    assert re.fullmatch(running_line, lines[2]), lines[2]
    assert re.fullmatch(r"  running: trial 5 on a worker, 0/\? epochs, for 0 min 0\d s; no heartbeat for longer than "
                        r"the grace period: its worker is gone, .*", lines[3]), lines[3]  # fmt: skip
    lines = lines[:3] + lines[4:]
    assert lines[3:6] == [
        "  failed: 2 x interrupted (trials 1, 3)",
        "  failed: 1 x OutOfMemoryError: CUDA out of memory (trial 0)",
        "  failed: 1 x no reason recorded (its worker was killed or lost, or the database went away) (trial 2)",
    ]
    assert lines[6] == "  no complete trial yet"


def _val_images(meta: dict) -> tuple[np.ndarray, np.ndarray]:
    from training import TrainConfig
    from training.data.prepare import prepare_data

    config = TrainConfig.model_validate(meta["config"])
    data = prepare_data(config.data, config.seed)
    return data.decoded.images[data.val_idx], data.decoded.labels[data.val_idx]


def _plain_timm_predictions(path: Path, images: np.ndarray) -> np.ndarray:
    """What a user without this project does: timm + safetensors + the header's normalisation."""
    import timm

    meta = json.loads(safe_open(str(path), "pt").metadata()["search"])
    model = timm.create_model(meta["model"], num_classes=meta["num_classes"])
    model.load_state_dict(load_file(str(path)))
    model.eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(meta["mean"]).view(1, 3, 1, 1)) / torch.tensor(meta["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x).argmax(1).numpy()


def test_export_loads_into_plain_timm_and_predicts_as_the_trial_did(finished_study, tmp_path, monkeypatch):  # fmt: skip
    from sklearn.metrics import f1_score

    monkeypatch.setenv("SEARCH_CACHE_DIR", finished_study["env"]["SEARCH_CACHE_DIR"])
    out = tmp_path / "best.safetensors"
    search("export", "--study", "lr-sweep", "--out", str(out), env=finished_study["env"])
    meta = json.loads(safe_open(str(out), "pt").metadata()["search"])
    images, labels = _val_images(meta)
    predicted = _plain_timm_predictions(out, images)
    study = optuna.load_study(study_name="lr-sweep", storage=finished_study["url"])
    assert f1_score(labels, predicted, average="macro") == pytest.approx(study.best_value, abs=1e-9)
    assert meta["metrics"]["confusion_matrix"] == study.best_trial.user_attrs["confusion_matrix"]

    again = search_here("export", "--study", "lr-sweep", "--out", str(out), env=finished_study["env"])
    assert again.returncode == 2 and "already exists; pass --force" in again.stderr
    forced = search_here("export", "--study", "lr-sweep", "--out", str(out), "--force", env=finished_study["env"])
    assert forced.returncode == 0 and read_meta(out)["metrics"] == meta["metrics"]


def test_export_all_data_trains_the_best_trials_params_on_every_image_up_to_its_best_epoch(finished_study, tmp_path):
    study = optuna.load_study(study_name="lr-sweep", storage=finished_study["url"])
    best, env = study.best_trial, finished_study["env"]
    out = tmp_path / "final.safetensors"
    done = search_here("export", "--study", "lr-sweep", "--all-data", "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr
    assert (
        f"trial {best.number}'s params trained on all the data for {best.user_attrs['best_epoch'] + 1}" in done.stdout
    )
    meta = read_meta(out)
    assert meta["epoch"] == best.user_attrs["best_epoch"] and meta["metrics"] == {}
    assert meta["trained_on"]["images"] == 675 and meta["config"]["optimizer"]["lr"] == best.params["lr"]
    trial_model = read_meta(finished_study["home"] / "artifacts" / best.user_attrs["checkpoint_artifact"])
    assert trial_model["metrics"]["macro_f1"] == best.value  # the trial's own checkpoint, untouched
    pruned = next(t for t in study.trials if t.state == TrialState.PRUNED)
    refused = search_here("export", "--study", "lr-sweep", "--all-data", "--trial", str(pruned.number), "--out",
                          str(tmp_path / "p.safetensors"), env=env)  # fmt: skip
    assert refused.returncode == 1 and f"trial {pruned.number} is PRUNED" in refused.stderr
    both = search_here("export", "--study", "lr-sweep", "--all-data", "--retrain", "--out", str(out), env=env)
    assert both.returncode == 2 and "argument --retrain: not allowed with argument --all-data" in both.stderr
    # the best K for an ensemble, each trained again on all the data
    complete = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    top = search_here("export", "--study", "lr-sweep", "--all-data", "--top", str(len(complete) + 1), "--out",
                      str(tmp_path / "top"), env=env)  # fmt: skip
    assert top.returncode == 0 and top.stdout.count("params trained on all the data") == len(complete), top.stderr
    assert sorted(p.name for p in (tmp_path / "top").iterdir()) == sorted(
        f"trial-{t.number}.safetensors" for t in complete
    )
    for trial in complete:
        meta = read_meta(tmp_path / "top" / f"trial-{trial.number}.safetensors")
        assert meta["trained_on"]["images"] == 675 and meta["epoch"] == trial.user_attrs["best_epoch"]


def test_export_all_data_of_a_trial_without_its_epochs_is_one_error(tmp_path):
    from optuna.distributions import FloatDistribution

    from search.export import Export, export_trial
    from training import SearchServiceError

    study = optuna.create_study(direction="maximize")  # a trial recorded by plain Optuna: no epochs
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.01}, distributions={"lr": FloatDistribution(0.001, 0.1)},
                                              value=0.5, user_attrs={"config": "{}"}))  # fmt: skip
    with pytest.raises(SearchServiceError, match="trial 0 did not record its best epoch"):
        export_trial(study, None, tmp_path / "x.safetensors", mode=Export.ALL_DATA)
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("command", ["status", "best", "export", "stop"])
def test_commands_that_read_the_study_answer_without_importing_torch(finished_study, tmp_path, command):
    """They read the database and copy a file: torch and timm would add seconds to each."""
    out = ["--out", str(tmp_path / "best.safetensors")] if command == "export" else []
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "search", command, "--study", "lr-sweep", *out],
        capture_output=True, text=True, env={**os.environ, **finished_study["env"]},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "optuna" in imported and "torch" not in imported and "timm" not in imported


def test_export_retrain_remakes_a_checkpoint_removed_by_retention(finished_study, tmp_path):
    study = optuna.load_study(study_name="lr-sweep", storage=finished_study["url"])
    best = study.best_trial
    stored = finished_study["home"] / "artifacts" / best.user_attrs["checkpoint_artifact"]
    aside = tmp_path / "aside"
    stored.rename(aside)  # as retention does to checkpoints outside the top k
    try:
        out = tmp_path / "again.safetensors"
        refused = search_here("export", "--study", "lr-sweep", "--out", str(out), env=finished_study["env"])
        assert refused.returncode == 1 and "--retrain" in refused.stderr and not out.exists()
        assert f"it is not in {finished_study['home'] / 'artifacts'}: removed by checkpoint retention" in refused.stderr
        # the report still has its page, saying why it has no example images
        report = search_here("report", "--study", "lr-sweep", "--out", str(tmp_path / "r"), env=finished_study["env"])
        assert report.returncode == 0, report.stderr
        assert "The best trial's checkpoint is not in" in (tmp_path / "r" / "index.html").read_text()
        retrained = search_here(
            "export", "--study", "lr-sweep", "--out", str(out), "--retrain", env=finished_study["env"]
        )
        assert retrained.returncode == 0, retrained.stderr
        meta = json.loads(safe_open(str(out), "pt").metadata()["search"])
        assert meta["metrics"]["macro_f1"] == pytest.approx(best.value)  # same seed, same CPU: same model
    finally:
        aside.rename(stored)


def test_export_top_writes_the_best_trials_for_an_ensemble_and_nothing_when_it_refuses(tmp_path):
    env = {"SEARCH_HOME": str(tmp_path / "home")}
    three = ["--study", "lr-sweep", "--n-trials", "3", *TINY, "--set", "pruner={name: none}", "--set", "enqueue=[]"]
    assert search_here("run", *three, "--set", "checkpoints.keep_top_k=2", env=env).returncode == 0
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/home/studies.db")
    best = sorted(study.trials, key=lambda t: -t.value)
    assert [t.state for t in best] == [TrialState.COMPLETE] * 3
    folder = tmp_path / "top"
    # the third best's checkpoint went to retention (keep_top_k=2): the export stops before writing any
    refused = search_here("export", "--study", "lr-sweep", "--top", "3", "--out", str(folder), env=env)
    assert refused.returncode == 1 and f"trial {best[2].number} has no stored checkpoint" in refused.stderr
    assert "removed by checkpoint retention" in refused.stderr and "--retrain" in refused.stderr
    assert not folder.exists() or not any(folder.iterdir())
    two = search_here("export", "--study", "lr-sweep", "--top", "2", "--out", str(folder), env=env)
    assert two.returncode == 0, two.stderr
    assert sorted(folder.iterdir()) == sorted(folder / f"trial-{t.number}.safetensors" for t in best[:2])
    for trial in best[:2]:
        assert read_meta(folder / f"trial-{trial.number}.safetensors")["metrics"]["macro_f1"] == trial.value
    again = search_here("export", "--study", "lr-sweep", "--top", "1", "--out", str(folder), env=env)
    assert again.returncode == 2 and "already exists; pass --force" in again.stderr
    # more than there are: all of them (the third trained again), and it says so
    four = search_here(
        "export", "--study", "lr-sweep", "--top", "4", "--out", str(folder), "--retrain", "--force", env=env
    )
    assert four.returncode == 0 and "only 3 complete trial(s)" in four.stderr, four.stderr
    assert read_meta(folder / f"trial-{best[2].number}.safetensors")["metrics"]["macro_f1"] == pytest.approx(
        best[2].value
    )
    both = search_here("export", "--study", "lr-sweep", "--top", "1", "--trial", "0", "--out", str(folder), env=env)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


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


def test_delete_removes_a_study_and_every_file_it_stored_and_nothing_of_another(tmp_path):
    env = {"SEARCH_HOME": str(tmp_path)}
    two = ["--study", "lr-sweep", "--n-trials", "2", *TINY, "--set", "pruner={name: none}", "--set", "enqueue=[]"]
    assert search_here("run", *two, "--set", "name=kept", env=env).returncode == 0
    kept = {p.name for p in (tmp_path / "artifacts").iterdir()}
    assert search_here("run", *two, "--set", "name=gone", env=env).returncode == 0
    theirs = {p.name for p in (tmp_path / "artifacts").iterdir()} - kept
    assert len(theirs) >= 3  # two checkpoints and the pictures of the trials' notes
    url = f"sqlite:///{tmp_path}/studies.db"
    running = optuna.load_study(study_name="gone", storage=url).ask()  # a worker still at it
    busy = search_here("delete", "--study", "gone", "--yes", env=env)
    assert busy.returncode == 1 and f"has running trials ({running.number}); stop its workers first" in busy.stderr
    optuna.load_study(study_name="gone", storage=url).tell(running, state=TrialState.FAIL)

    asked = search_here("delete", "--study", "gone", env=env)
    assert asked.returncode == 2 and "pass --yes" in asked.stderr
    assert f"study 'gone' (3 trials) and its {len(theirs)} stored files" in asked.stderr
    assert {p.name for p in (tmp_path / "artifacts").iterdir()} == kept | theirs  # nothing deleted yet
    done = search_here("delete", "--study", "gone", "--yes", env=env)
    assert done.returncode == 0 and "deleted study 'gone'" in done.stderr, done.stderr
    assert {p.name for p in (tmp_path / "artifacts").iterdir()} == kept
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["kept"]
    assert "kept" in optuna_cli("studies", "--storage", url)  # the plain CLI still reads what is left


def test_running_again_continues_the_same_study(finished_study):
    args = [a if a != "5" else "7" for a in finished_study["args"]]
    reordered = [  # the study file edited: the same choices in another order are the same space
        "--set", "space.loss={f1: {}, label_smoothing: {smoothing: {low: 0.02, high: 0.2}}, "
                 "focal: {focal_gamma: {low: 0.5, high: 3.0}}, cross_entropy: {}}",
        "--set", "space.accumulation_steps={choices: [8, 4, 2, 1]}",
    ]  # fmt: skip
    again = search_here("run", *args, *reordered, env=finished_study["env"])
    assert again.returncode == 0, again.stderr[-2000:]
    study = optuna.load_study(study_name="lr-sweep", storage=finished_study["url"])
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 7 and len({t.number for t in study.trials}) == len(study.trials)
    # enqueued configurations are not queued a second time
    assert sum(t.params.get("lr") == 0.01 and t.params.get("scheduler") == "cosine" for t in study.trials) == 1


@pytest.mark.parametrize("cache", ["writable", "read-only"])
def test_two_workers_share_one_sqlite_file(cache, tmp_path, folder_dataset):
    broken = folder_dataset / "cat" / "broken.jpg"
    broken.write_bytes(b"not an image")  # logged as skipped by the run, which decodes for its workers
    env = {"SEARCH_HOME": str(tmp_path)}
    if cache == "read-only":  # the run decodes into a temporary folder of its own, and its workers map that
        (tmp_path / "home").write_text("a file where a folder should be")
        (tmp_path / "tmp").mkdir()
        env |= {"SEARCH_CACHE_DIR": str(tmp_path / "home" / "cache"), "TMPDIR": str(tmp_path / "tmp")}
    verbose = [arg for arg in TINY if arg != "--quiet"]
    data = f"data={{source: folder, root: {folder_dataset}, image_size: 16}}"
    # a class of one image, on the training side by the seed: warned of by the run, not by each worker
    write_image(folder_dataset / "owl" / "0.png", np.random.default_rng(3), (200, 200, 200))
    config = load_study("lr-sweep", [data]).data.model_copy(update={"cache_dir": tmp_path / "probe"})
    seed = next(s for s in range(20) if 3 not in (d := prepare.prepare_data(config, s)).decoded.labels[d.val_idx])
    args = ["--n-trials", "4", "--workers", "2", *verbose, "--set", data, "--set", f"seed={seed}"]
    run = search("run", "--study", "lr-sweep", *args, env=env)
    assert "database is locked" not in run.stderr
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/studies.db")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4 and len(study.trials) == 4
    # each worker's progress and log lines say which worker printed them; the warning is printed once
    lines = (run.stdout + run.stderr).splitlines()
    for index in (0, 1):
        assert any(line.startswith(f"[worker {index}] trial ") for line in lines), lines
    assert sum("share one SQLite file" in line for line in lines) == 1
    skipped = [line for line in lines if f"skipping unreadable image {broken}" in line]
    assert skipped == [f"search: skipping unreadable image {broken}"], skipped  # decoded once, before the workers
    unvalidated = [line for line in lines if "the validation split has no image of 1 of 4 classes: 'owl'" in line]
    assert len(unvalidated) == 1 and unvalidated[0].startswith("search: "), unvalidated  # said by the run only
    if cache == "read-only":
        assert sum("cannot write the cache folder" in line for line in lines) == 1, lines
        assert (tmp_path / "tmp" / f"search-cache-{os.getuid()}" / "decoded").is_dir()


def test_eight_workers_share_one_study_on_postgresql(tmp_path):
    url = postgres_url()
    name = f"pg-{uuid.uuid4().hex[:8]}"
    env = {"SEARCH_HOME": str(tmp_path), "SEARCH_STORAGE": url}
    try:
        run = search("run", "--study", "lr-sweep", "--n-trials", "16", "--workers", "8", *TINY,
                     "--set", f"name={name}", "--set", "train.epochs=1", env=env)  # fmt: skip
        assert "Error" not in run.stderr and "error" not in run.stderr.lower()
        study = optuna.load_study(study_name=name, storage=url)
        finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) == 16 and len(study.trials) == 16
        assert sorted(t.number for t in study.trials) == list(range(16))  # no duplicates, no surplus
        assert len({t.user_attrs["worker"] for t in study.trials}) >= 4  # the trials really were shared
        assert len({t.user_attrs.get("seed") for t in finished}) == 1
    finally:
        optuna.delete_study(study_name=name, storage=url)


def test_report_is_one_page_with_its_pictures(finished_study, tmp_path):
    out = tmp_path / "report"
    assert search_here("report", "--study", "lr-sweep", "--out", str(out), env=finished_study["env"]).returncode == 0
    page = (out / "index.html").read_text()
    pictures = re.findall(r'<img src="([^"]+)"', page)
    expected = {"classes.png", "samples.png", "confusion.png", "per_class_f1.png", "f1_vs_lr.png", "curves.png"}
    assert expected <= set(pictures)
    assert all((out / p).read_bytes().startswith(b"\x89PNG") for p in pictures)
    study = optuna.load_study(study_name="lr-sweep", storage=finished_study["url"])
    assert f"Best: trial {study.best_trial.number}" in page and "largest / smallest" not in page  # title is in the PNG
    assert "Most confused classes" in page and "<table>" in page
    (tmp_path / "a-file").write_text("x")
    taken = search_here("report", "--study", "lr-sweep", "--out", str(tmp_path / "a-file"), env=finished_study["env"])
    assert taken.returncode == 1 and taken.stderr.strip().splitlines() == [
        f"search: error: cannot make the report folder {tmp_path / 'a-file'}: File exists; give another --out"
    ]


def test_report_of_a_study_with_no_complete_trial_yet_shows_what_there_is(finished_study, tmp_path):
    """Asked for early (only pruned or failed trials so far): the page, without a best trial."""
    from optuna.distributions import FloatDistribution

    storage = finished_study["url"]
    done = optuna.load_study(study_name="lr-sweep", storage=storage)
    early = optuna.create_study(study_name=f"early-{uuid.uuid4().hex[:6]}", storage=storage, direction="maximize")
    early.set_user_attr("spec", done.user_attrs["spec"])
    early.add_trial(optuna.trial.create_trial(
        state=TrialState.PRUNED, params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1e-1, log=True)},
        intermediate_values={0: 0.3, 1: 0.4},
    ))  # fmt: skip
    oom = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    for reason in [oom, "loss became nan at epoch 1"] * 2:
        early.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"failure_reason": reason}))
    out = tmp_path / "report"
    run = search_here("report", "--study", early.study_name, "--out", str(out), env=finished_study["env"])
    assert run.returncode == 0, run.stderr
    page = (out / "index.html").read_text()
    assert "1 pruned" in page and "No trial has completed yet" in page and "confusion.png" not in page
    failed = re.search(r"<h3>Failed trials</h3><table>(.*?)</table>", page)
    assert failed, page[-2000:]
    cells = [re.sub(r"<[^>]+>", "", row).strip() for row in re.findall(r"<td[^>]*>(.*?)</td>", failed.group(1))]
    assert cells == [oom, "2", "1, 3", "loss became nan at epoch 1", "2", "2, 4"]
    assert {"classes.png", "samples.png", "curves.png"} <= set(re.findall(r'<img src="([^"]+)"', page))


def test_packing_without_mps_is_answered_with_what_it_costs(tmp_path, monkeypatch):
    from search.run.mps import mps_running, packing_warning

    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert not mps_running()
    os.mkfifo(tmp_path / "control")  # what a running nvidia-cuda-mps-control -d leaves there
    assert mps_running()
    warning = packing_warning(2, gpus=1, mps=False)
    assert warning and "Add --mps" in warning and "--trials-per-gpu 1" in warning
    assert packing_warning(2, gpus=1, mps=True) is None  # under MPS their kernels run at once
    assert packing_warning(1, gpus=1, mps=False) is None and packing_warning(2, gpus=0, mps=False) is None


def test_each_gpu_gets_its_share_of_the_workers(monkeypatch):
    from search.run.gpus import sharing, worker_environments, worker_gpus

    # --trials-per-gpu 2 on a 4-GPU machine: 8 workers, two on every GPU, none without one.
    envs = worker_environments(8, worker_gpus("auto", 4))
    assert sorted(env["CUDA_VISIBLE_DEVICES"] for env in envs) == ["0", "0", "1", "1", "2", "2", "3", "3"]
    assert all(set(env) <= {"CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS"} for env in envs)  # no storage URL in it
    assert worker_gpus("cuda", 4) == ["0", "1", "2", "3"] and worker_gpus("cuda:2", 4) == ["2"]  # the one it names
    # A container or a Slurm job that was given GPUs 2 and 5 hands out only those.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    given = worker_environments(4, worker_gpus("auto", 2))
    assert [env["CUDA_VISIBLE_DEVICES"] for env in given] == ["2", "5", "2", "5"]
    assert worker_gpus("cuda:1", 2) == ["5"]  # torch's cuda:1 there
    assert worker_gpus("cpu", 2) == [] and worker_gpus("auto", 0) == []
    assert "CUDA_VISIBLE_DEVICES" not in worker_environments(2, worker_gpus("auto", 0))[0]  # CPU workers
    # Each worker knows how many share its GPU (3 workers on 2 GPUs: two on the first, one alone).
    assert sharing(8, ["0", "1", "2", "3"]) == [2] * 8
    assert sharing(3, ["0", "1"]) == [2, 1, 2]
    assert sharing(2, []) == [1, 1]


def _run_started(monkeypatch, *args: str) -> list:
    """``search run`` with ``args`` up to where it starts its workers: what each would be given."""
    import search.run.open
    import search.run.workers

    started = []
    monkeypatch.setattr(search.run.workers, "start_worker_server", lambda: None)
    monkeypatch.setattr(search.run.open, "open_run", lambda spec, options, progress: _OpenedNothing())
    monkeypatch.setattr(search.run.workers, "start_workers", lambda plan: started.extend(plan) or 0)
    assert search_here("run", "--study", "lr-sweep", *args).returncode == 0
    return started


def test_workers_of_a_study_on_one_named_gpu_all_train_there(tmp_path, monkeypatch):
    """``train.device: cuda:1`` with --workers: each worker sees only that GPU, as its cuda."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("SEARCH_HOME", str(tmp_path))
    started = _run_started(monkeypatch, "--trials-per-gpu", "2", "--set", "train.device=cuda:1")
    assert [env["CUDA_VISIBLE_DEVICES"] for _, _, env in started] == ["1", "1"]
    assert [spec.train.device for spec, _, _ in started] == ["cuda", "cuda"]  # the last word on the device
    assert [options.worker_index for _, options, _ in started] == [0, 1] and started[0][1].workers == 2


def test_workers_sharing_a_gpu_split_the_share_their_images_may_take_there(tmp_path, monkeypatch):
    """Packed workers decide at once, each seeing the GPU empty: each gets its part of the share."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("SEARCH_HOME", str(tmp_path))
    started = _run_started(monkeypatch, "--workers", "8", *TINY)  # 4 workers on each of the 2 GPUs
    assert [spec.train.gpu_images_share for spec, _, _ in started] == [0.125] * 8
    assert started[0][0].trial_config({}, None).gpu_images_share == 0.125
    alone = _run_started(monkeypatch, "--workers", "2", *TINY)  # one on each GPU: as written
    assert [spec.train.gpu_images_share for spec, _, _ in alone] == [0.5, 0.5]


class _OpenedNothing:
    data = type("NoData", (), {"notes": ()})()
