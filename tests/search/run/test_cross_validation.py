"""Cross-validated studies (``data.folds``) done for real: two workers on competition-layout data,
the same folds for every trial, pooled out-of-fold values, the hand-over of fold models and of an
out-of-fold ensemble to ``search predict``, pruning between folds, and a worker killed mid-fold."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from search.record import TrialRecord
from tests.conftest import TINY, search, search_here, write_competition
from tests.warm import launch
from training import TrainConfig, classification_metrics
from training.checkpoint import read_meta
from training.data.prepare import prepare_data

FOLDS, EPOCHS = 3, 2
RUN = [
    "run", "--study", "mask-lr-sweep", "--n-trials", "4", "--workers", "2",
    "--set", "model.name=test_resnet", "--set", "model.pretrained=false", "--set", "data.image_size=16",
    "--set", f"train.epochs={EPOCHS}", "--set", "train.batch_size=32", "--set", "train.augment.rare=[]",
    "--set", "pruner={name: none}", "--set", "fold_pruning={p_threshold: 0}", "--set", f"data.folds={FOLDS}",
    "--set", "checkpoints.keep_top_k=3",
    "--set", "enqueue=[{lr: 0.001, accumulation_steps: 1, scheduler: cosine, loss: cross_entropy}]",
]  # fmt: skip


@pytest.fixture(scope="module")
def cross_validated(tmp_path_factory):
    """Four trials of a 3-fold study on 18 people, run by two workers, every one complete (no pruning)."""
    root = write_competition(tmp_path_factory.mktemp("mask") / "train")
    home = tmp_path_factory.mktemp("home")
    env = {"SEARCH_HOME": str(home), "MASK_DATA": str(root)}
    run = search(*RUN, env=env)
    study = optuna.load_study(study_name="mask-lr-sweep", storage=f"sqlite:///{home}/studies.db")
    return {"root": root, "home": home, "env": env, "run": run, "study": study}


def _out_of_fold(home: Path, trial: optuna.trial.FrozenTrial) -> dict[str, np.ndarray] | None:
    """The trial's pooled out-of-fold file, or None where retention removed it."""
    path = home / "artifacts" / trial.user_attrs["out_of_fold_artifact"]
    if not path.is_file():
        return None
    kept = np.load(path)
    return {key: kept[key] for key in kept.files}


@pytest.mark.slow
def test_every_trial_of_every_worker_validates_each_image_once_on_the_same_folds_by_person(cross_validated):
    home, study, run = cross_validated["home"], cross_validated["study"], cross_validated["run"]
    lines = (run.stdout + run.stderr).splitlines()
    assert {w for w in (0, 1) if any(line.startswith(f"[worker {w}] trial ") for line in lines)} == {0, 1}
    assert any(re.search(r"trial \d+ fold 2 epoch 1 \(2 of 2\) macro-F1", line) for line in lines)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and len({t.user_attrs["worker"] for t in complete}) == 2
    config = TrainConfig.model_validate_json(complete[0].user_attrs["config"])  # as the workers ran it
    data = prepare_data(config.data, config.seed)
    groups = data.decoded.groups
    kept = [oof for t in complete if (oof := _out_of_fold(home, t)) is not None]
    assert len(kept) == 3  # checkpoints.keep_top_k: the out-of-fold files of the other are removed with its models
    for oof in kept:
        assert np.array_equal(oof["fold"], kept[0]["fold"])  # the same folds, in the same order, on each worker
        assert np.array_equal(oof["labels"], data.decoded.labels)
        assert sorted(set(oof["fold"].tolist())) == list(range(FOLDS))  # every image validated, in one fold
        assert np.isfinite(oof["probs"]).all()
        for k in range(FOLDS):  # nobody on both sides of a fold
            assert not set(groups[oof["fold"] == k]) & set(groups[oof["fold"] != k])
    for trial in complete:
        assert sorted(trial.intermediate_values) == list(range(FOLDS * EPOCHS))  # fold k's epoch e is step k×E+e
        assert len(trial.user_attrs["fold_values"]) == FOLDS and trial.user_attrs["epochs_run"] == FOLDS * EPOCHS
        for k, value in enumerate(trial.user_attrs["fold_values"]):  # each fold's last epoch
            assert trial.intermediate_values[k * EPOCHS + EPOCHS - 1] == pytest.approx(value)
        if (oof := _out_of_fold(home, trial)) is not None:  # the value is the pooled predictions' macro-F1
            assert classification_metrics(oof["labels"], oof["probs"])["macro_f1"] == pytest.approx(trial.value)


@pytest.mark.slow
def test_status_shows_the_spread_over_the_folds(cross_validated):
    study = cross_validated["study"]
    best = study.best_trial
    values = best.user_attrs["fold_values"]
    status = search_here("status", "--study", "mask-lr-sweep", env=cross_validated["env"]).stdout
    assert f"  split: {FOLDS} folds by person, every image validated once" in status
    assert f"(folds {min(values):.3f}-{max(values):.3f}, sd {np.std(values, ddof=1):.3f})" in status, status
    assert re.search(r"trial macro-F1 fold sd", status)
    best_json = json.loads(search_here("best", "--study", "mask-lr-sweep", env=cross_validated["env"]).stdout)
    assert best_json["metrics"]["fold_values"] == values
    assert best_json["metrics"]["fold_sd"] == pytest.approx(np.std(values, ddof=1))


@pytest.mark.slow
def test_fold_models_and_an_out_of_fold_ensemble_are_handed_to_predict(cross_validated, tmp_path):
    env, study, root = cross_validated["env"], cross_validated["study"], cross_validated["root"]
    plain = search_here("export", "--study", "mask-lr-sweep", "--out", str(tmp_path / "one.safetensors"), env=env)
    assert plain.returncode == 1 and plain.stderr.count("\n") == 1, plain.stderr
    assert "is cross-validated: its models are its folds'; pass --folds" in plain.stderr

    (tmp_path / "a-file").write_text("")
    blocked = str(tmp_path / "a-file" / "f")
    under = search_here("export", "--study", "mask-lr-sweep", "--folds", "--out", blocked, env=env)
    assert under.returncode == 1 and under.stderr.count("\n") == 1, under.stderr
    assert "cannot make the folder for the fold models" in under.stderr and "give another --out" in under.stderr
    folds = tmp_path / "folds"
    exported = search_here("export", "--study", "mask-lr-sweep", "--folds", "--out", str(folds), env=env)
    assert exported.returncode == 0, exported.stderr
    number = study.best_trial.number
    files = sorted(folds.iterdir())
    assert [f.name for f in files] == [f"trial-{number}-fold-{k}.safetensors" for k in range(FOLDS)]
    assert len({read_meta(f)["metrics"]["macro_f1"] for f in files}) == FOLDS  # three models, not one thrice

    images = tmp_path / "eval"
    images.mkdir()
    for path in sorted((root / "images").glob("00000[0-3]_*/mask1.jpg")):
        shutil.copy(path, images / f"{path.parent.name}.jpg")

    def predicted(checkpoints: list[Path], name: str) -> np.ndarray:
        out = tmp_path / f"{name}.csv"
        code = search_here("predict", "--checkpoint", *map(str, checkpoints), "--images", str(images), "--out",
                           str(out), "--quiet").returncode  # fmt: skip
        assert code == 0
        rows = sorted(csv.DictReader(open(out)), key=lambda r: r["path"])
        return np.array([[float(v) for k, v in r.items() if k.startswith("prob_")] for r in rows])

    alike = predicted([folds], "folds")  # the folder: its fold models, averaged alike
    assert np.allclose(alike, np.mean([predicted([f], f.stem) for f in files], axis=0), atol=1e-5)

    ensemble = tmp_path / "ensemble"
    made = search_here("ensemble", "--study", "mask-lr-sweep", "--top", "3", "--out", str(ensemble), env=env)
    assert made.returncode == 0, made.stderr
    manifest = json.loads((ensemble / "ensemble.json").read_text())
    said = re.search(r"out-of-fold macro-F1 (\S+), against (\S+) for its best single member, trial (\d+)", made.stdout)
    assert said and float(said[1]) == pytest.approx(manifest["out_of_fold"], abs=1e-4), made.stdout
    assert float(said[1]) >= float(said[2])  # the kept ensemble is the best met, a single member among those met
    assert int(said[3]) == number and float(said[2]) == pytest.approx(study.best_value, abs=1e-4)
    assert sum(m["weight"] for m in manifest["members"]) == pytest.approx(1)
    expected = sum(
        m["weight"] * np.mean([predicted([ensemble / name], name) for name in m["checkpoints"]], axis=0)
        for m in manifest["members"]
    )
    assert np.allclose(predicted([ensemble], "ensemble"), expected, atol=1e-5)  # by the manifest's weights
    again = search_here("ensemble", "--study", "mask-lr-sweep", "--out", str(ensemble), env=env)
    assert again.returncode == 2 and "already holds an ensemble; pass --force" in again.stderr
    # --top 5 of 4 complete trials, of which retention (keep_top_k: 3) kept the files of 3: picked among those
    wider = search_here("ensemble", "--study", "mask-lr-sweep", "--top", "5", "--out", str(tmp_path / "e5"), env=env)
    assert wider.returncode == 0, wider.stderr
    kept = {t.number for t in study.trials if t.state.name == "COMPLETE" and _out_of_fold(cross_validated["home"], t)}
    members = {m["trial"] for m in json.loads((tmp_path / "e5" / "ensemble.json").read_text())["members"]}
    assert len(kept) == 3 and members <= kept

    # the report shows the folds' spread, the ensemble, and the images the best trial's fold models got wrong
    report = search_here("report", "--study", "mask-lr-sweep", "--out", str(tmp_path / "report"), env=env)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report" / "index.html").read_text()
    spread = re.escape(f"({TrialRecord.of(study.best_trial).spread()})")
    best_line = rf"Best: trial {number}, out-of-fold macro-F1 {study.best_value:.4f} .*over 3 folds {spread}"
    assert re.search(best_line, page), page
    assert "<th>fold sd</th>" in page and "<h3>Out-of-fold ensemble</h3>" in page
    assert f"Out-of-fold macro-F1 {manifest['out_of_fold']:.4f}, against" in page
    assert "Noise: one validation image of the rarest class" in page
    assert (tmp_path / "report" / "confused.png").is_file() and "most confused classes" in page


@pytest.mark.slow
def test_all_data_export_of_a_cross_validated_trial_trains_one_model_for_its_epochs(cross_validated, tmp_path):
    out = tmp_path / "all.safetensors"
    exported = search_here("export", "--study", "mask-lr-sweep", "--all-data", "--out", str(out),
                           env=cross_validated["env"])  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    meta = read_meta(out)
    assert meta["num_classes"] == 18 and meta["epoch"] == EPOCHS - 1  # each fold's last epoch: the one it kept


DEMO = ["run", "--study", "lr-sweep", *TINY, "--set", "pruner={name: none}"]
GOOD = "{lr: 0.003, accumulation_steps: 1, scheduler: cosine, loss: cross_entropy}"
BAD = "{lr: 0.0003, accumulation_steps: 8, scheduler: cosine, loss: cross_entropy}"


@pytest.mark.slow
def test_a_trial_clearly_behind_the_best_stops_between_folds(tmp_path):
    env = {"SEARCH_HOME": str(tmp_path)}
    run = search_here(*DEMO, "--n-trials", "2", "--set", "data.folds=5", "--set", "train.epochs=2",
                      "--set", f"enqueue=[{GOOD}, {BAD}]", env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    good, bad = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/studies.db").trials
    assert good.state == TrialState.COMPLETE and len(good.user_attrs["fold_values"]) == 5
    assert bad.state == TrialState.PRUNED
    # below the best on each of two folds (p = 1/4 < 0.3, the default): its last three folds never train
    assert len(bad.user_attrs["fold_values"]) == 2 and max(bad.intermediate_values) == 2 * 2 - 1
    assert all(b < g for b, g in zip(bad.user_attrs["fold_values"], good.user_attrs["fold_values"]))
    assert "trial 1 fold 2" not in run.stderr


@pytest.mark.slow
def test_a_trial_killed_mid_fold_is_retried_whole_by_the_next_worker(tmp_path):
    url = f"sqlite:///{tmp_path}/studies.db"
    args = [*DEMO, "--n-trials", "1", "--set", "data.folds=3", "--set", "train.epochs=3",
            "--heartbeat-interval", "1", "--grace-period", "3"]  # fmt: skip
    worker = launch(*args, env={**os.environ, "SEARCH_HOME": str(tmp_path)})
    deadline, storage = time.monotonic() + 120, None
    while time.monotonic() < deadline:  # until the trial is inside its second fold
        assert worker.poll() is None, worker.communicate()[1][-2000:]
        try:
            storage = storage or optuna.storages.RDBStorage(url)
            trials = optuna.load_study(study_name="lr-sweep", storage=storage).get_trials(deepcopy=False)
        except Exception:
            trials = []
        if trials and max(trials[0].intermediate_values, default=-1) >= 3:
            break
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    killed = optuna.load_study(study_name="lr-sweep", storage=url).trials[0]
    assert killed.state == TrialState.RUNNING and len(killed.user_attrs["fold_values"]) >= 1

    after = search_here(*args, "--n-trials", "2", env={"SEARCH_HOME": str(tmp_path)})
    assert after.returncode == 0, after.stderr[-2000:]
    trials = optuna.load_study(study_name="lr-sweep", storage=url).trials
    failed, retried = trials[0], next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert failed.state == TrialState.FAIL and "stopped sending heartbeats" in failed.user_attrs["failure_reason"]
    assert retried.params == failed.params
    assert retried.state == TrialState.COMPLETE and len(retried.user_attrs["fold_values"]) == 3
    assert sorted(retried.intermediate_values) == list(range(9))  # from fold 0 again: retried whole
    assert not (tmp_path / "work").exists()
