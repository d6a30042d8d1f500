"""The learning-rate range test as users run it: ``search lr-find`` (its lines and its plot), and a
study file that asks for it (the range found once, recorded, and searched by every later worker)."""

from __future__ import annotations

import json
import re

import optuna
import pytest

from search.lr_find import RECORD_ATTR
from search.study import load_study
from tests.conftest import TINY, search_here

TINY_SET = [arg for arg in TINY if arg != "--quiet"]


@pytest.mark.slow
def test_lr_find_prints_the_range_a_run_can_use_and_draws_it(tmp_path):
    out = search_here("lr-find", "--study", "lr-sweep", *TINY_SET, "--out", str(tmp_path / "plots")).stdout
    found = re.search(r"suggested lr: (\S+) to (\S+) ", out)
    assert found and float(found[1]) < float(found[2]), out
    # lines a run takes as they are; where the study's queued lrs (0.003, 0.001) lie outside, the run queues none
    low, high = float(found[1]), float(found[2])
    outside = [lr for lr in (0.003, 0.001) if not low <= lr <= high]
    drop = r" --set '(enqueue=\[\])'" if outside else ""
    line = re.search(r"  search run --study lr-sweep --set '(space\.lr=\{.*\})'" + drop + "\n", out)
    assert line and load_study("lr-sweep", list(line.groups())).space["lr"].low == low, out
    if outside:
        queued = ", ".join(f"{lr:g}" for lr in outside)
        assert f"the study's queued trials with lr {queued} are outside it: the run above queues none" in out
    plot = tmp_path / "plots" / "lr-find-lr-sweep.png"
    assert f"plot: {plot}" in out and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


@pytest.mark.slow
def test_a_study_asking_for_lr_find_records_the_range_once_and_every_run_searches_it(tmp_path):
    env = {"SEARCH_HOME": str(tmp_path)}
    args = ["--study", "lr-sweep", *TINY_SET, "--set", "train.epochs=1", "--set", "space.lr={lr_find: true}",
            "--set", "enqueue=[{lr: 1.0e-5, scheduler: cosine}]"]  # fmt: skip
    first = search_here("run", *args, "--n-trials", "2", env=env)
    assert first.returncode == 0, first.stderr
    first = first.stdout + first.stderr
    assert "lr-find: a learning-rate range test for study 'lr-sweep'" in first
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/studies.db")
    found = study.user_attrs[RECORD_ATTR]
    middle = float(f"{(found['low'] * found['high']) ** 0.5:.3g}")
    recorded = f"the range recorded, {found['low']:.2e} to {found['high']:.2e}"
    assert f"lr-find: queued lr outside {recorded}, moved as one around its middle: 1e-05 -> {middle:g}" in first
    assert study.trials[0].params["lr"] == middle
    assert found["low"] < found["high"] and found["steps"] >= 40
    # the next run (a later worker) does not test again and samples the same recorded range
    later = search_here("run", *args, "--n-trials", "3", env=env)
    assert later.returncode == 0, later.stderr
    later = later.stdout + later.stderr
    assert "lr-find" not in later
    lrs = [t.params["lr"] for t in study.get_trials()]
    assert len(lrs) == 3 and all(found["low"] <= lr <= found["high"] for lr in lrs), (found, lrs)
    assert {t.distributions["lr"].low for t in study.get_trials()} == {found["low"]}
    status = search_here("status", "--study", "lr-sweep", env=env).stdout
    assert f"lr searched from {found['low']:.2e} to {found['high']:.2e}, found by lr-find" in status


def test_two_workers_that_tested_at_once_search_the_range_recorded_first(tmp_path):
    from search.run.open import check_study, create_study
    from search.run.options import RunOptions
    from search.store import open_storage

    url = f"sqlite:///{tmp_path}/studies.db"
    queued = "enqueue=[{lr: 3.0e-4, scheduler: cosine}, {lr: 5.0e-4, scheduler: cosine}, {lr: 5.0e-3, loss: f1}]"
    spec = load_study("lr-sweep", ["space.lr={lr_find: true}", queued])
    options = RunOptions(storage_url=url, artifacts=tmp_path / "artifacts", n_trials=4, timeout=None)
    storage = open_storage(url)
    said, later = [], []
    first, _ = create_study(spec, options, storage, {"low": 1e-3, "high": 1e-2, "steps": 40}, say=said.append)
    second, study = create_study(spec, options, storage, {"low": 2e-3, "high": 3e-2, "steps": 40}, say=later.append)
    for searched in (first, second, check_study(spec, storage)):  # check_study: how a later run opens it
        assert (searched.space["lr"].low, searched.space["lr"].high, searched.space.lr_to_find()) == (1e-3, 1e-2, None)
    assert study.user_attrs[RECORD_ATTR]["high"] == 1e-2
    # the queued sets' lr outside the range recorded moved as one, their centre (3.87e-4) to its middle
    # (3.16e-3), their ratio kept; the set inside stays; each queued once
    inside = [{"lr": 2.45e-3, "scheduler": "cosine"}, {"lr": 4.08e-3, "scheduler": "cosine"}]
    inside.append({"lr": 5e-3, "loss": "f1"})
    assert [t.system_attrs["fixed_params"] for t in study.get_trials()] == inside
    create_study(load_study("lr-sweep", [queued]), options, storage)  # the file without lr_find: nothing new
    assert len(study.get_trials()) == 3
    # the moves said once, by the worker that queued them, for the range recorded (the second's own differs)
    assert said == [
        "lr-find: queued lr outside the range recorded, 1.00e-03 to 1.00e-02, moved as one around its middle: "
        "0.0003 -> 0.00245, 0.0005 -> 0.00408"
    ]
    assert later == []


def test_lr_find_where_it_cannot_work_is_one_line_before_anything_trains(tmp_path):
    for given, said in [
        (["sampler={name: grid}", "space.lr={lr_find: true}"], "lr_find gives a range, and the grid sampler needs"),
        (["space.scheduler={step: {step_gamma: {lr_find: true}}}"], "lr_find is for the top-level lr entry"),
        (["space.accumulation_steps={lr_find: true}"], "lr_find is for the learning rate (train.optimizer.lr)"),
    ]:
        sets = [arg for one in given for arg in ("--set", one)]
        run = search_here("run", "--study", "lr-sweep", *sets, env={"SEARCH_HOME": str(tmp_path)})
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and said in run.stderr, run.stderr


def test_queued_rates_outside_the_range_move_as_one_around_its_middle_and_those_inside_stay():
    from search.lr_find import describe_moved, moved_inside

    assert moved_inside([3e-3, 1e-3], 6.09e-3, 6.09e-2) == {3e-3: 3.34e-2, 1e-3: 1.11e-2}  # 3 apart, around 1.93e-2
    assert moved_inside([1e-5], 1e-3, 1e-2) == {1e-5: 3.16e-3}  # one alone: the middle
    assert moved_inside([3e-3, 1e-3], 2e-3, 2e-2) == {1e-3: 6.32e-3}  # 3e-3, inside, stays
    assert moved_inside([3e-3, 1e-3], 5e-4, 2e-3) == {3e-3: 1e-3}  # onto the set inside: the run queues one
    assert moved_inside([3e-3, 1e-3, 3e-3], 1e-3, 1e-2) == {}
    clipped = moved_inside([1e-6, 1e-2], 1e-3, 2e-3)  # wider apart than the range: its edges
    assert clipped == {1e-6: 1e-3, 1e-2: 2e-3}
    assert describe_moved(clipped, 1e-3, 2e-3) == (
        "queued lr outside the range recorded, 1.00e-03 to 2.00e-03, moved as one around its middle: "
        "1e-06 -> 0.001, 0.01 -> 0.002; those past its edges clipped to them"
    )


@pytest.mark.slow
def test_search_run_with_workers_leaves_the_range_test_to_one_of_its_workers(tmp_path):
    """The command that only launches does not test on its own; one worker tests while the other
    waits for its range, and both search it."""
    from tests.conftest import search

    env = {"SEARCH_HOME": str(tmp_path)}
    run = search("run", "--study", "lr-sweep", *TINY_SET, "--set", "train.epochs=1", "--set",
                 "space.lr={lr_find: true}", "--n-trials", "2", "--workers", "2", env=env)  # fmt: skip
    lines = (run.stdout + run.stderr).splitlines()
    tests = [line for line in lines if "lr-find: a learning-rate range test for study 'lr-sweep'" in line]
    assert len(tests) == 1 and tests[0].startswith("[worker "), lines
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/studies.db")
    found = study.user_attrs[RECORD_ATTR]
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2 and all(found["low"] <= t.params["lr"] <= found["high"] for t in study.trials)


def test_a_storage_outage_after_the_range_test_does_not_run_it_again(tmp_path, monkeypatch):
    """The range is recorded after a test of a minute or more: where the storage goes away then,
    the worker waits for it and records the range it found, without testing again."""
    import sqlalchemy

    import search.run.open as opening
    from search import lr_find
    from search.run.options import RunOptions
    from search.run.progress import Progress
    from training import LrFindResult

    tests, failed = [], []
    result = LrFindResult(rates=(1e-4, 1e-1), losses=(2.0, 1.0), raw=(2.0, 1.0), low=1e-3, high=1e-2,
                          diverged_at=None, seconds=60.0)  # fmt: skip
    monkeypatch.setattr(lr_find, "find", lambda spec, steps=None: tests.append(spec.name) or result)
    monkeypatch.setattr(lr_find, "_TESTED", {}, raising=False)  # no test of this process before
    real = optuna.Study.set_user_attr

    def away_once(study, key, value):
        if key == RECORD_ATTR and not failed:
            failed.append(key)
            raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("connection refused"))
        return real(study, key, value)

    monkeypatch.setattr(optuna.Study, "set_user_attr", away_once)
    monkeypatch.setattr(opening.time, "sleep", lambda seconds: None)
    spec = load_study("lr-sweep", [*(a for a in TINY_SET[1::2] if "=" in a), "space.lr={lr_find: true}"])
    options = RunOptions(f"sqlite:///{tmp_path}/studies.db", tmp_path / "artifacts", 2, None, quiet=True)
    run = opening.open_run(spec, options, Progress(quiet=True))
    assert failed and tests == ["lr-sweep"]  # tested once; the range recorded on the second try
    assert run.study.user_attrs[RECORD_ATTR]["low"] == 1e-3 and run.spec.space["lr"].high == 1e-2


def _fake_result(low: float, high: float):
    from training import LrFindResult

    return LrFindResult(rates=(1e-4, 1e-1), losses=(2.0, 1.0), raw=(2.0, 1.0), low=low, high=high, diverged_at=None,
                        seconds=60.0)  # fmt: skip


def test_a_worker_whose_lock_was_cut_while_it_tested_keeps_the_range_recorded_first(tmp_path, monkeypatch):
    """Behind PgBouncer a test longer than idle_transaction_timeout loses the lock, and a waiting worker
    tests too: the range recorded first wins, and both search it."""
    from search import lr_find
    from search.run.open import create_study
    from search.run.options import RunOptions
    from search.store import open_storage
    from search.store.budget import TrialGate

    url = f"sqlite:///{tmp_path}/studies.db"
    spec = load_study("lr-sweep", ["space.lr={lr_find: true}"])
    options = RunOptions(storage_url=url, artifacts=tmp_path / "artifacts", n_trials=4, timeout=None)
    first = {"low": 2e-3, "high": 2e-2, "steps": 40}

    def meanwhile(spec, steps=None):  # the other worker, which took the lock when it was cut, records first
        optuna.load_study(study_name="lr-sweep", storage=url).set_user_attr(RECORD_ATTR, first)
        return _fake_result(1e-3, 1e-2)

    monkeypatch.setattr(lr_find, "find", meanwhile)
    monkeypatch.setattr(lr_find, "_TESTED", {}, raising=False)
    monkeypatch.setattr(TrialGate, "still_held", lambda gate: False)  # cut while it tested
    searched, study = create_study(spec, options, open_storage(url), say=lambda line: None, test_lr=True)
    assert study.user_attrs[RECORD_ATTR] == first
    assert (searched.space["lr"].low, searched.space["lr"].high) == (2e-3, 2e-2)


def test_a_range_test_that_fails_leaves_no_setup_recorded_so_the_fixed_run_goes_on(tmp_path, monkeypatch):
    """The test runs before the study's setup is recorded: a batch too large for it, made smaller,
    is not refused as another setup."""
    from search import lr_find
    from search.run.open import create_study
    from search.run.options import RunOptions
    from search.store import open_storage
    from training import DataError

    url = f"sqlite:///{tmp_path}/studies.db"
    options = RunOptions(storage_url=url, artifacts=tmp_path / "artifacts", n_trials=4, timeout=None)

    def too_large(spec, steps=None):
        raise DataError("train.batch_size = 4096 leaves no full batch; use a smaller train.batch_size")

    monkeypatch.setattr(lr_find, "find", too_large)
    monkeypatch.setattr(lr_find, "_TESTED", {}, raising=False)
    large = load_study("lr-sweep", ["space.lr={lr_find: true}", "train.batch_size=4096"])
    with pytest.raises(DataError, match="no full batch"):
        create_study(large, options, open_storage(url), say=lambda line: None, test_lr=True)
    assert "spec" not in optuna.load_study(study_name="lr-sweep", storage=url).user_attrs
    monkeypatch.setattr(lr_find, "find", lambda spec, steps=None: _fake_result(1e-3, 1e-2))
    smaller = load_study("lr-sweep", ["space.lr={lr_find: true}", "train.batch_size=32"])
    searched, study = create_study(smaller, options, open_storage(url), say=lambda line: None, test_lr=True)
    assert json.loads(study.user_attrs["spec"])["train"]["batch_size"] == 32 and searched.space["lr"].high == 1e-2
