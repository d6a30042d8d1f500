"""Leaders trained again before they are handed over: the study file's ``confirm`` run by two
workers once the budget is spent, ``search confirm`` queueing more that a later worker takes, the
study ranking by the mean of each configuration's runs, and a confirmation run that fails retried
as one."""

from __future__ import annotations

import json
import statistics
import uuid
from collections import defaultdict

import optuna
import pytest
from optuna.trial import TrialState

from search.store import CONFIRMS, open_storage
from tests.conftest import TINY, search, search_here

LOUD = [a for a in TINY if a != "--quiet"]  # the workers' lines are read below
RUN = ["run", "--study", "lr-sweep", "--n-trials", "3", *LOUD, "--set", "train.epochs=2",
       "--set", "pruner={name: none}"]  # fmt: skip


def _runs(study: optuna.Study) -> dict[int, list[optuna.trial.FrozenTrial]]:
    """Each trial of the search's confirmation runs, by its number."""
    found = defaultdict(list)
    for t in study.trials:
        if CONFIRMS in t.system_attrs:
            found[t.system_attrs[CONFIRMS]["trial"]].append(t)
    return found


def _means(study: optuna.Study) -> list[tuple[int, float]]:
    """(trial, the mean of its complete runs) of each complete trial of the search, best first, computed here."""
    runs = _runs(study)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    means = [(t.number, statistics.fmean([t.value, *(r.value for r in runs[t.number] if r in complete)]))
             for t in complete if CONFIRMS not in t.system_attrs]  # fmt: skip
    return sorted(means, key=lambda m: -m[1])


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory):
    """Three trials of the search and ``confirm: {top: 2, seeds: 2}``, run by two workers."""
    home = tmp_path_factory.mktemp("confirm")
    env = {"SEARCH_HOME": str(home)}
    run = search(*RUN, "--workers", "2", "--set", "confirm={top: 2, seeds: 2}", env=env)
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{home}/studies.db")
    return {"home": home, "env": env, "run": run, "study": study}


@pytest.mark.slow
def test_the_study_files_confirm_trains_the_leaders_again_with_further_seeds_outside_the_budget(confirmed):
    study, run = confirmed["study"], confirmed["run"]
    searched = [t for t in study.trials if CONFIRMS not in t.system_attrs]
    assert [t.state for t in searched] == [TrialState.COMPLETE] * 3  # the budget: 3 trials of the search
    runs = _runs(study)
    for number, _ in _means(study)[:2]:  # the leaders, as they stand now, each trained again twice
        original = study.trials[number]
        again = runs[number]
        assert sorted(r.system_attrs[CONFIRMS]["seed"] for r in again) == [1, 2], number
        for r in again:
            seed = r.system_attrs[CONFIRMS]["seed"]
            assert r.state == TrialState.COMPLETE and r.params == original.params
            assert r.user_attrs["confirms"] == number and r.user_attrs["seed"] == seed
            assert json.loads(r.user_attrs["config"])["seed"] == seed  # its own seed: weights, augmentation, split
            assert sorted(r.intermediate_values) == [0, 1]  # never pruned
            assert r.user_attrs["checkpoint_artifact"]  # stored, as any trial's
    assert all(len(r) == 2 for r in runs.values())  # no run queued twice, by either worker
    logs = run.stdout + run.stderr
    assert logs.count("the search's budget is spent: confirming the leaders, outside it: trial ") >= 1
    assert {w for w in (0, 1) if f"[worker {w}] trial " in logs} == {0, 1}
    assert "confirms trial" in logs and "(outside the budget)" in logs


@pytest.mark.slow
def test_status_best_and_the_report_rank_by_the_mean_of_the_runs_and_show_their_spread(confirmed, tmp_path):
    study, env = confirmed["study"], confirmed["env"]
    (top, mean), *_ = _means(study)
    values = [study.trials[top].value, *(r.value for r in _runs(study)[top])]
    status = search_here("status", "--study", "lr-sweep", env=env).stdout
    confirmations = sum(len(r) for r in _runs(study).values())
    assert f"  complete 3; confirmation runs, outside the budget: complete {confirmations}\n" in status
    assert f"  best: trial {top}, macro-F1 {mean:.4f} (mean of 3 runs, trials " in status
    assert f"sd {statistics.stdev(values):.3f})" in status
    assert "runs runs sd" in status
    best = json.loads(search_here("best", "--study", "lr-sweep", env=env).stdout)
    assert best["number"] == top and best["confirmed"]["mean"] == pytest.approx(mean)
    assert sorted(best["confirmed"]["values"]) == sorted(values)
    report = search_here("report", "--study", "lr-sweep", "--out", str(tmp_path / "report"), env=env)
    page = (tmp_path / "report" / "index.html").read_text()
    assert report.returncode == 0 and "<th>runs sd</th>" in page and f"<td>{mean:.4f}</td>" in page
    assert "(confirms trial " in page and "outside the budget)" in page
    export = search_here("export", "--study", "lr-sweep", "--out", str(tmp_path / "best.safetensors"), env=env)
    assert export.returncode == 0 and f"trial {top}" in export.stdout + export.stderr  # the confirmed leader's
    assert (tmp_path / "best.safetensors").read_bytes() == _stored(confirmed["home"], study.trials[top])


def _stored(home, trial) -> bytes:
    return (home / "artifacts" / trial.user_attrs["checkpoint_artifact"]).read_bytes()


@pytest.mark.slow
def test_retention_keeps_each_leading_configurations_runs_and_export_falls_back_to_them(confirmed, tmp_path):
    """Retention removed a trial's checkpoint while it ranked low; its confirmation runs lifted it:
    export writes the best of its runs' checkpoints."""
    home, env = confirmed["home"], confirmed["env"]
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{home}/studies.db")
    runs = _runs(study)
    files = {p.name for p in (home / "artifacts").iterdir()}
    for number, _ in _means(study)[:3]:  # checkpoints.keep_top_k = 3 configurations, each with all its runs
        assert all(t.user_attrs["checkpoint_artifact"] in files for t in [study.trials[number], *runs[number]])
    (top, _), *_ = _means(study)
    removed = home / "artifacts" / study.trials[top].user_attrs["checkpoint_artifact"]
    kept = removed.read_bytes()
    removed.unlink()  # as retention did
    out = tmp_path / "fallback.safetensors"
    try:
        export = search_here("export", "--study", "lr-sweep", "--out", str(out), env=env)
    finally:
        removed.write_bytes(kept)  # for the module's other tests
    assert export.returncode == 0, export.stderr
    best_run = max(runs[top], key=lambda t: t.value)
    assert out.read_bytes() == _stored(home, best_run)


@pytest.mark.slow
def test_search_confirm_queues_more_once_and_a_later_worker_takes_them(confirmed):
    env, home = confirmed["env"], confirmed["home"]
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{home}/studies.db")
    leaders = [number for number, _ in _means(study)[:3]]
    asked = search_here("confirm", "--study", "lr-sweep", "--top", "3", "--seeds", "3", env=env)
    assert asked.returncode == 0 and "queued " in asked.stdout and "outside the budget" in asked.stdout
    again = search_here("confirm", "--study", "lr-sweep", "--top", "3", "--seeds", "3", env=env)
    assert "nothing queued" in again.stdout
    search(*RUN, "--set", "confirm=null", env=env)  # the budget is spent: the worker runs the queued ones only
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{home}/studies.db")
    runs = _runs(study)
    for number in leaders:
        assert sorted(r.system_attrs[CONFIRMS]["seed"] for r in runs[number]) == [1, 2, 3], number
        assert all(r.state == TrialState.COMPLETE for r in runs[number])
    assert sum(CONFIRMS not in t.system_attrs for t in study.trials) == 3  # still 3 trials of the search


def test_a_confirmation_run_that_fails_is_queued_again_as_one(tmp_path):
    from search.run.lifecycle import queue_again
    from search.store import fail_and_retry
    from search.store._internals import trial_id

    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    study = optuna.create_study(storage=storage, study_name=f"retry-{uuid.uuid4().hex[:8]}")
    marker = {"trial": 0, "seed": 2}
    for _ in range(2):
        attrs = {CONFIRMS: marker, "fixed_params": {"x": 0.5}}
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=attrs))
    lost, interrupted = study.ask(), study.ask()
    for trial in (lost, interrupted):
        trial.suggest_float("x", 0, 1)
    fail_and_retry(study, trial_id(lost), lambda _: {"failure_reason": "its worker stopped"})  # a killed worker's
    study.tell(interrupted, state=TrialState.FAIL)  # Ctrl-C
    queue_again(study, interrupted)
    retries = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.system_attrs[CONFIRMS], t.system_attrs["fixed_params"]) for t in retries] == [
        (marker, {"x": 0.5}),
        (marker, {"x": 0.5}),
    ]
