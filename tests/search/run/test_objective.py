"""The trial adapter ranks, prunes and picks by the study's objective, whichever the study file
names, and every output names it."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from search.study import STUDIES_DIR, load_study
from tests.conftest import MUST_PRUNE, TINY, search_here, write_image
from training.checkpoint import read_meta
from training.data.prepare import prepare_data

LIVE = [arg for arg in TINY if arg != "--quiet"]


@pytest.mark.slow
def test_a_study_ranking_by_balanced_accuracy_ranks_prunes_exports_and_reports_by_it(tmp_path):
    env = {"SEARCH_HOME": str(tmp_path)}
    run = search_here("run", "--study", "lr-sweep", "--n-trials", "3", *LIVE, *MUST_PRUNE,
                      "--set", "objective=balanced_accuracy", env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "trial 0 epoch 0 (1 of 3) balanced accuracy 0." in run.stderr and "macro-F1" not in run.stderr
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/studies.db")
    assert study.metric_names == ["balanced_accuracy"]  # the dashboard's name for the value

    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    for t in complete:  # the value is the best epoch's balanced accuracy, and that epoch is its best
        assert t.value == t.user_attrs["balanced_accuracy"] == max(t.intermediate_values.values())
        assert t.intermediate_values[t.user_attrs["best_epoch"]] == t.value
    assert any(t.user_attrs["macro_f1"] != t.value for t in complete)  # the two differ on this data
    pruned = study.trials[1]  # the queued trial far behind: what it reported is balanced accuracy
    assert pruned.state == TrialState.PRUNED
    assert pruned.user_attrs["balanced_accuracy"] == max(pruned.intermediate_values.values())

    top = max(complete, key=lambda t: t.user_attrs["balanced_accuracy"])
    best = json.loads(search_here("best", "--study", "lr-sweep", env=env).stdout)
    assert (best["objective"], best["number"], best["value"]) == ("balanced_accuracy", top.number, top.value)
    status = search_here("status", "--study", "lr-sweep", env=env).stdout
    assert f"  best: trial {top.number}, balanced accuracy {top.value:.4f}" in status
    exported = search_here("export", "--study", "lr-sweep", "--out", str(tmp_path / "best.safetensors"), env=env)
    assert f"trial {top.number} (balanced accuracy {top.value:.4f}) exported to" in exported.stdout
    meta = read_meta(tmp_path / "best.safetensors")
    assert meta["metrics"]["balanced_accuracy"] == top.value and meta["epoch"] == top.user_attrs["best_epoch"]
    assert search_here("report", "--study", "lr-sweep", "--out", str(tmp_path / "report"), env=env).returncode == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert f"Best: trial {top.number}, validation balanced accuracy {top.value:.4f}" in page
    assert "<th>balanced accuracy</th>" in page


def test_an_unknown_objective_is_one_line_naming_the_choices(tmp_path):
    run = search_here("run", "--study", "lr-sweep", "--set", "objective=f1", env={"SEARCH_HOME": str(tmp_path)})
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        f"search: error: {STUDIES_DIR / 'lr-sweep.yaml'} with --set objective: objective = 'f1': unknown objective "
        "'f1', choose from ['accuracy', 'balanced_accuracy', 'macro_f1', 'roc_auc', 'weighted_f1', 'worst_class_f1']"
    ]


def test_an_objective_the_validation_split_leaves_undefined_is_one_line_before_anything_trains(
    tmp_path, folder_dataset
):
    # a class of one image, on the training side by the seed: one-vs-rest ROC-AUC has no value
    write_image(folder_dataset / "owl" / "0.png", np.random.default_rng(3), (200, 200, 200))
    data = f"data={{source: folder, root: {folder_dataset}, image_size: 16}}"
    config = load_study("lr-sweep", [data]).data.model_copy(update={"cache_dir": tmp_path / "probe"})
    seed = next(s for s in range(20) if 3 not in (d := prepare_data(config, s)).decoded.labels[d.val_idx])
    run = search_here("run", "--study", "lr-sweep", *TINY, "--set", data, "--set", f"seed={seed}",
                      "--set", "objective=roc_auc", env={"SEARCH_HOME": str(tmp_path)})  # fmt: skip
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1] == (
        "search: error: the objective roc_auc (one-vs-rest ROC-AUC) is undefined on this validation split: it "
        "needs validation images of every class; choose another objective in the study file"
    )
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path}/studies.db") == []  # no study made, no trial run
