"""The learning-rate range test as users run it: ``search lr-find`` (its lines and its plot), and a
study file that asks for it (the range found once, recorded, and searched by every later worker)."""

from __future__ import annotations

import re

import optuna
from conftest import TINY, search_here

from search.study import load_study
from search.study.setup import LR_RANGE_ATTR

TINY_SET = [arg for arg in TINY if arg != "--quiet"]


def test_lr_find_prints_the_range_a_run_can_use_and_draws_it(tmp_path):
    out = search_here("lr-find", "--study", "lr-sweep", *TINY_SET, "--out", str(tmp_path / "plots")).stdout
    found = re.search(r"suggested lr: (\S+) to (\S+) ", out)
    assert found and float(found[1]) < float(found[2]), out
    # lines a run takes as they are: the tiny model's range leaves the study's queued lrs outside
    line = re.search(r"  search run --study lr-sweep --set '(space\.lr=\{.*\})' --set '(enqueue=\[\])'\n", out)
    assert load_study("lr-sweep", [line[1], line[2]]).space["lr"].low == float(found[1]), out
    assert "the study's queued trials with lr 0.003, 0.001 are outside it: the run above queues none" in out
    plot = tmp_path / "plots" / "lr-find-lr-sweep.png"
    assert f"plot: {plot}" in out and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_a_study_asking_for_lr_find_records_the_range_once_and_every_run_searches_it(tmp_path):
    env = {"SEARCH_HOME": str(tmp_path)}
    args = ["--study", "lr-sweep", *TINY_SET, "--set", "train.epochs=1", "--set", "space.lr={lr_find: true}",
            "--set", "enqueue=[]"]  # fmt: skip
    first = search_here("run", *args, "--n-trials", "3", env=env)
    assert first.returncode == 0, first.stderr
    first = first.stdout + first.stderr
    assert "lr-find: a learning-rate range test for study 'lr-sweep'" in first
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/studies.db")
    found = study.user_attrs[LR_RANGE_ATTR]
    assert found["low"] < found["high"] and found["steps"] >= 40
    # the next run (a later worker) does not test again and samples the same recorded range
    later = search_here("run", *args, "--n-trials", "6", env=env)
    assert later.returncode == 0, later.stderr
    later = later.stdout + later.stderr
    assert "lr-find" not in later
    lrs = [t.params["lr"] for t in study.get_trials()]
    assert len(lrs) == 6 and all(found["low"] <= lr <= found["high"] for lr in lrs), (found, lrs)
    assert {t.distributions["lr"].low for t in study.get_trials()} == {found["low"]}
    status = search_here("status", "--study", "lr-sweep", env=env).stdout
    assert f"lr searched from {found['low']:.2e} to {found['high']:.2e}, found by its range test" in status


def test_two_workers_that_tested_at_once_search_the_range_recorded_first(tmp_path):
    from search.run.open import check_study, create_study
    from search.run.options import RunOptions
    from search.store import open_storage

    url = f"sqlite:///{tmp_path}/studies.db"
    spec = load_study("lr-sweep", ["space.lr={lr_find: true}", "enqueue=[]"])
    options = RunOptions(storage_url=url, artifacts=tmp_path / "artifacts", n_trials=4, timeout=None)
    storage = open_storage(url)
    first, _ = create_study(spec, options, storage, {"low": 1e-3, "high": 1e-2, "steps": 40})
    second, study = create_study(spec, options, storage, {"low": 2e-3, "high": 3e-2, "steps": 40})
    for searched in (first, second, check_study(spec, storage)):  # check_study: how a later run opens it
        assert (searched.space["lr"].low, searched.space["lr"].high, searched.space.lr_to_find()) == (1e-3, 1e-2, None)
    assert study.user_attrs[LR_RANGE_ATTR]["high"] == 1e-2
