"""`search export`: stored checkpoints that load into plain timm, the best K for an ensemble, a
trial trained again (on all the data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import timm
import torch
from optuna.trial import TrialState
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import TINY, search, search_here
from training.checkpoint import read_meta


def _val_images(meta: dict) -> tuple[np.ndarray, np.ndarray]:
    from training import TrainConfig
    from training.data.prepare import prepare_data

    config = TrainConfig.model_validate(meta["config"])
    data = prepare_data(config.data, config.seed)
    return data.decoded.images[data.val_idx], data.decoded.labels[data.val_idx]


def _plain_timm_predictions(path: Path, images: np.ndarray) -> np.ndarray:
    """What a user without this project does: timm + safetensors + the header's normalisation."""

    meta = json.loads(safe_open(str(path), "pt").metadata()["search"])
    model = timm.create_model(meta["model"], num_classes=meta["num_classes"])
    model.load_state_dict(load_file(str(path)))
    model.eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(meta["mean"]).view(1, 3, 1, 1)) / torch.tensor(meta["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x).argmax(1).numpy()


@pytest.mark.slow
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


@pytest.mark.slow
def test_export_all_data_trains_the_best_trials_params_on_every_image_up_to_its_best_epoch(finished_study, tmp_path):
    study = optuna.load_study(study_name="lr-sweep", storage=finished_study["url"])
    best, env = study.best_trial, finished_study["env"]
    out = tmp_path / "final.safetensors"
    done = search_here("export", "--study", "lr-sweep", "--all-data", "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr
    last = best.user_attrs["best_epoch"]
    assert f"trial {best.number}'s params trained on all the data for epochs 0 to {last}, its best" in done.stdout
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

    from search.handover import Export, export_trial
    from training import SearchServiceError

    study = optuna.create_study(direction="maximize")  # a trial recorded by plain Optuna: no epochs
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.01}, distributions={"lr": FloatDistribution(0.001, 0.1)},
                                              value=0.5, user_attrs={"config": "{}"}))  # fmt: skip
    with pytest.raises(SearchServiceError, match="trial 0 did not record its best epoch"):
        export_trial(study, None, tmp_path / "x.safetensors", mode=Export.ALL_DATA)
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
