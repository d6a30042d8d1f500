"""Warm starts: a new study's first trials are the best of another study in the same storage, their
params put onto the new space (dropped where it lacks them, clipped into its ranges), queued once."""

from __future__ import annotations

import sqlite3

import optuna
import pytest

from search.ranking import ranked
from search.study import load_study
from search.study.warm import map_params
from tests.conftest import TINY, search_here

NARROW = [
    "--set", "name=warm", "--set", "enqueue=[]", "--set", "space.accumulation_steps=null",
    "--set", "space.lr={low: 1.0e-3, high: 2.0e-3, log: true}",
    "--set", "space.loss={cross_entropy: {}, focal: {focal_gamma: {low: 0.5, high: 3.0}}}",
]  # fmt: skip


@pytest.mark.slow
def test_a_study_starts_with_the_best_trials_of_another_put_onto_its_space(finished_study, tmp_path):
    # a copy (its write-ahead log included): the shared study stays as it is
    with (
        sqlite3.connect(finished_study["home"] / "studies.db") as shared,
        sqlite3.connect(tmp_path / "studies.db") as copy,
    ):
        shared.backup(copy)
    env = {**finished_study["env"], "SEARCH_HOME": str(tmp_path)}
    url = f"sqlite:///{tmp_path}/studies.db"
    source = ranked(optuna.load_study(study_name="lr-sweep", storage=url).get_trials())[:2]
    args = ["--study", "lr-sweep", *[a for a in TINY if a != "--quiet"], *NARROW, "--warm-start", "lr-sweep"]
    args += ["--set", "train.epochs=1"]
    first = search_here("run", *args, "--set", "warm_start.top=2", "--n-trials", str(len(source)), env=env)
    assert first.returncode == 0, first.stderr
    said = [line for line in (first.stdout + first.stderr).splitlines() if line.startswith("warm start:")]
    numbers = ", ".join(str(t.number) for t in source)
    assert said and said[0].startswith(f"warm start: queued trials {numbers} of study 'lr-sweep' first ("), said
    assert f"trial {source[0].number}: " in said[0] and "accumulation_steps dropped (not searched here)" in said[0]

    warm = optuna.load_study(study_name="warm", storage=url).get_trials()
    for theirs, ours in zip(source, warm[:2]):
        assert ours.params["lr"] == min(max(theirs.params["lr"], 1e-3), 2e-3)
        assert "accumulation_steps" not in ours.params
        if theirs.params["loss"] in ("cross_entropy", "focal"):
            assert ours.params["loss"] == theirs.params["loss"]
    # run again (another worker, a later day): nothing is queued twice
    again = search_here("run", *args, "--n-trials", str(len(source) + 1), env=env)
    assert again.returncode == 0 and "warm start:" not in again.stdout + again.stderr, again.stderr
    trials = optuna.load_study(study_name="warm", storage=url).get_trials()
    assert len(trials) == len(source) + 1 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}


def test_a_missing_or_empty_study_to_warm_start_from_is_one_line(tmp_path):
    env = {"SEARCH_HOME": str(tmp_path)}
    run = search_here("run", "--study", "lr-sweep", *TINY, "--warm-start", "lr-swep", env=env)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "no study 'lr-swep' in this storage" in run.stderr
    itself = search_here("run", "--study", "lr-sweep", *TINY, "--warm-start", "lr-sweep", env=env)
    assert itself.returncode == 2 and "cannot warm-start from itself" in itself.stderr


def test_params_are_dropped_clipped_or_kept_as_the_space_takes_them():
    space = load_study("lr-sweep", ["space.lr={low: 1.0e-3, high: 2.0e-3, log: true}", "enqueue=[]"]).space
    mapped = map_params(
        7, {"lr": 0.5, "scheduler": "step", "step_size": 9, "step_gamma": 0.5, "loss": "dice", "drop": 1}, space
    )
    assert mapped.params == {"lr": 2e-3, "scheduler": "step", "step_size": 3, "step_gamma": 0.5}
    assert mapped.changes == (
        "lr 0.5 clipped to 0.002",
        "step_size 9 clipped to 3",
        "loss='dice' dropped (not one of ['cross_entropy', 'focal', 'label_smoothing', 'f1'])",
        "drop dropped (not searched here)",
    )
    gridded = load_study("lr-sweep", ["space.weight_decay={low: 0.0, high: 0.1, step: 0.01}"]).space
    mapped = map_params(8, {"weight_decay": 0.033, "lr": "fast"}, gridded)
    assert mapped.params == {"weight_decay": 0.03} and mapped.changes == (
        "lr='fast' dropped (not a number)",
        "weight_decay 0.033 clipped to 0.03",
    )
