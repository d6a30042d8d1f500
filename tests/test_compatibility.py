"""A study made by an earlier version of the code goes on under this one: its database, attribute
names, recorded distributions, spec, inputs and stored checkpoint are read as they were written.

``fixtures/before-rebuild/`` was made at commit 94cab27 (before ``search/`` was rebuilt) by
``search run --study fixtures/before-rebuild/study.yaml`` with ``SEARCH_HOME`` in a new folder:
3 trials (2 complete, 1 pruned) of test_resnet on the demo data, ``weight_decay`` searched too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import search_here
from training.checkpoint import load_checkpoint, read_meta

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "before-rebuild"
NAME = "before-rebuild"


@pytest.mark.slow
def test_a_study_made_before_the_rebuild_is_read_exported_and_continued(tmp_path):
    home = tmp_path / "home"
    shutil.copytree(FIXTURE, home, ignore=shutil.ignore_patterns("study.yaml"))
    env = {"SEARCH_HOME": str(home)}
    url = f"sqlite:///{home}/studies.db"
    before = optuna.load_study(study_name=NAME, storage=url).trials
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]

    status = search_here("status", "--study", NAME, env=env)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[:3] == [
        f"study {NAME}: 3 trials of test_resnet, demo data (675 images, 10 classes) at 16x16, 2 epochs of batch 32",
        "  complete 2, pruned 1",
        "  best: trial 2, macro-F1 0.8437",
    ]
    best = json.loads(search_here("best", "--study", NAME, env=env).stdout)
    assert best["number"] == 2 and set(best["params"]) == {
        "lr", "weight_decay", "accumulation_steps", "scheduler", "loss", "focal_gamma"
    }  # fmt: skip
    assert best["metrics"]["macro_f1"] == best["value"] and best["metrics"]["best_epoch"] == 1

    out = tmp_path / "best.safetensors"
    exported = search_here("export", "--study", NAME, "--out", str(out), env=env)
    assert exported.returncode == 0, exported.stderr
    model, meta = load_checkpoint(out)
    assert meta["metrics"]["macro_f1"] == best["value"] and meta["num_classes"] == 10
    assert model.fc.out_features == 10

    report = search_here("report", "--study", NAME, "--out", str(tmp_path / "report"), env=env)
    assert report.returncode == 0, report.stderr
    assert f"Best: trial 2, validation macro-F1 {best['value']:.4f}" in (tmp_path / "report" / "index.html").read_text()

    study_file = str(FIXTURE / "study.yaml")
    run = search_here("run", "--study", study_file, "--n-trials", "4", "--quiet", env=env)
    assert run.returncode == 0, run.stderr
    trials = optuna.load_study(study_name=NAME, storage=url).trials
    assert len(trials) == 4 and trials[3].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert {"lr", "weight_decay", "accumulation_steps", "scheduler", "loss"} <= set(trials[3].params)
    for old, now in zip(before, trials):  # what the earlier version wrote stays as it was
        assert (now.state, now.value, now.params, now.user_attrs) == (old.state, old.value, old.params, old.user_attrs)
    kept = [t for t in trials if (home / "artifacts" / t.user_attrs.get("checkpoint_artifact", "-")).is_file()]
    ranked = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value, reverse=True)
    assert [t.number for t in kept] == [ranked[0].number]  # keep_top_k: 1, across both versions' trials
    assert read_meta(home / "artifacts" / ranked[0].user_attrs["checkpoint_artifact"])["metrics"]["macro_f1"] == (
        ranked[0].value
    )
