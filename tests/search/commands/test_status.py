"""`search status`, `best` and `studies`: what a study trains, its trials by state, the best, and
what mattered (PED-ANOVA)."""

from __future__ import annotations

import json
import math
import random
import re
from datetime import datetime, timedelta

import numpy as np
import optuna
import pytest
import sqlalchemy
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from search.cli import main
from search.store import open_storage
from tests.conftest import FOUR, search_here


def test_status_best_and_studies_commands(finished_study):
    env = finished_study["env"]
    status = search_here("status", "--study", "lr-sweep", env=env).stdout
    assert "complete" in status and "pruned" in status and "best: trial" in status
    setup = r"test_resnet, demo data \(\d+ images, 10 classes\) at 16x16, 3 epochs of batch 32"
    # the data's facts in lines of their own: images, classes, the split, each class's validation images
    facts = r"  data: (\d+) images, 10 classes, in .*demo-digits.*\n  split: (\d+) train and (\d+) validation images\n"
    found = re.match(
        rf"study lr-sweep: \d+ trials of test_resnet, demo data at 16x16, 3 epochs of batch 32\n{facts}", status
    )
    assert found and int(found[1]) == int(found[2]) + int(found[3]), status
    per_class = re.search(r"  validation images per class: (.*)\n", status)[1]
    assert sum(int(item.split()[-1]) for item in per_class.split(", ")) == int(found[3]) and "digit_9 " in per_class
    best = json.loads(search_here("best", "--study", "lr-sweep", env=env).stdout)
    assert FOUR <= set(best["params"]) and best["metrics"]["macro_f1"] == best["value"]
    studies = search_here("studies", env=env).stdout.splitlines()
    best_value = optuna.load_study(study_name="lr-sweep", storage=finished_study["url"]).best_value
    assert studies[0].split()[:3] == ["study", "trials", "best"] and len(studies) == 2
    assert re.fullmatch(
        rf"lr-sweep +\d+ +{best_value:.4f}  macro-F1 +\d{{4}}-\d\d-\d\d \d\d:\d\d  {setup}",
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
    running_line = r"  running: trial 4 on gpu-node-3:4711, 2/10 epochs, macro-F1 0.5200, for \d s"
    assert re.fullmatch(running_line, lines[2]), lines[2]
    assert re.fullmatch(r"  running: trial 5 on a worker, 0/\? epochs, for \d s; no heartbeat for longer than "
                        r"the grace period: its worker is gone, .*", lines[3]), lines[3]  # fmt: skip
    lines = lines[:3] + lines[4:]
    assert lines[3:6] == [
        "  failed: 2 x interrupted (trials 1, 3)",
        "  failed: 1 x OutOfMemoryError: CUDA out of memory (trial 0)",
        "  failed: 1 x no reason recorded (its worker was killed or lost, or the database went away) (trial 2)",
    ]
    assert lines[6] == "  no complete trial yet"


LR = FloatDistribution(3e-4, 3e-2, log=True)


LOSS = CategoricalDistribution(["cross_entropy", "focal"])


SCHEDULER = CategoricalDistribution(["step", "cosine"])


STEP_SIZE = IntDistribution(1, 3)


def _study_with(tmp_path, n: int) -> None:
    """``n`` complete trials whose F1 depends on the learning rate alone (best near 3e-3)."""
    study = optuna.create_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/studies.db", direction="maximize")
    rng = random.Random(0)
    for i in range(n):
        lr = math.exp(rng.uniform(math.log(3e-4), math.log(3e-2)))
        params = {"lr": lr, "loss": LOSS.choices[i % 2], "scheduler": SCHEDULER.choices[i // 2 % 2]}
        distributions = {"lr": LR, "loss": LOSS, "scheduler": SCHEDULER}
        if params["scheduler"] == "step":  # a scheduler's own option: only some trials have it
            params["step_size"], distributions["step_size"] = 1 + i % 3, STEP_SIZE
        value = 1.0 - abs(math.log10(lr) - math.log10(3e-3)) / 2
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))


def _importance_lines(out: str) -> list[str]:
    lines = out.splitlines()
    if not any("parameter importance" in line for line in lines):
        return []
    start = next(i for i, line in enumerate(lines) if "parameter importance" in line)
    return [line.split()[0] for line in lines[start + 1 :] if line.strip()]


def test_status_ranks_the_parameter_that_mattered_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEARCH_HOME", str(tmp_path))
    _study_with(tmp_path, 16)
    assert main(["status", "--study", "lr-sweep"]) in (0, None)
    out = capsys.readouterr().out
    ranked = _importance_lines(out)
    assert ranked[0] == "lr" and set(ranked) == {"lr", "loss", "scheduler"}  # step_size: only some trials
    # optuna-dashboard's own evaluator, whatever Optuna's default (fANOVA before Optuna 5)
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/studies.db")
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    expected = optuna.importance.get_param_importances(study, params=sorted(ranked), evaluator=evaluator)
    shown = re.findall(r"^\s+(\w+) (\d\.\d{3})$", out.split("parameter importance (PED-ANOVA")[1], re.M)
    assert shown == [(name, f"{value:.3f}") for name, value in expected.items()]


def test_status_shows_no_importance_before_enough_trials_finished(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEARCH_HOME", str(tmp_path))
    _study_with(tmp_path, 3)
    assert main(["status", "--study", "lr-sweep"]) in (0, None)
    out = capsys.readouterr().out
    assert "best: trial" in out and "parameter importance (PED-ANOVA" not in out
    assert "  parameter importance: shown from 4 complete trials (3 so far)" in out.splitlines()
    assert out.startswith("study lr-sweep: 3 trials\n")  # made by plain Optuna: no spec to say what it trains


def test_status_ranks_the_one_parameter_of_a_space_of_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEARCH_HOME", str(tmp_path))
    study = optuna.create_study(study_name="lr-only", storage=f"sqlite:///{tmp_path}/studies.db")
    for i in range(6):
        study.add_trial(
            optuna.trial.create_trial(params={"lr": 1e-3 * (i + 1)}, distributions={"lr": LR}, value=i / 10)
        )
    assert main(["status", "--study", "lr-only"]) == 0
    assert re.search(r"parameter importance \(PED-ANOVA, as in the dashboard\):\n +lr 1\.000", capsys.readouterr().out)


def test_status_says_why_it_shows_no_importance_where_every_trial_scored_the_same(tmp_path, monkeypatch, capsys):
    """Trials that all learned nothing score alike: equal bars would read as a finding."""
    monkeypatch.setenv("SEARCH_HOME", str(tmp_path))
    study = optuna.create_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/studies.db")
    for i in range(6):
        params, distributions = {"lr": 1e-3 * (i + 1), "loss": LOSS.choices[i % 2]}, {"lr": LR, "loss": LOSS}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=0.0023))
    assert main(["status", "--study", "lr-sweep"]) == 0
    out = capsys.readouterr().out
    assert "  parameter importance: not shown: every complete trial scored the same macro-F1, 0.0023" in out
    assert "PED-ANOVA" not in out


def test_the_top_trials_table_keeps_its_columns_whatever_the_values(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEARCH_HOME", str(tmp_path))
    _study_with(tmp_path, 6)  # 'cross_entropy' is wider than its column's name
    assert main(["status", "--study", "lr-sweep"]) in (0, None)
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["trial", "macro-F1"])
    table = lines[start : start + 7]
    ends = [[m.end() for m in re.finditer(r"\S+", line)] for line in table]
    assert all(row == ends[0] for row in ends[1:]), "\n".join(table)  # every value right-aligned under its name
    assert any("cross_entropy" in line for line in table)


@pytest.mark.parametrize("command", [["export", "--out", "x.safetensors"], ["best"]], ids=["export", "best"])
def test_a_study_with_no_finished_trial_has_no_best_to_give(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setenv("SEARCH_HOME", str(tmp_path))
    storage = f"sqlite:///{tmp_path}/studies.db"
    optuna.create_study(study_name="empty", storage=storage)
    assert main([command[0], "--study", "empty", *command[1:]]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "search: error: study 'empty' has no complete trial yet; run it on (search status shows it)"


def _near_study(tmp_path, values: list[float], folds: list[list[float]] | None) -> None:
    from training import DataFacts

    study = optuna.create_study(study_name="near", storage=f"sqlite:///{tmp_path}/studies.db", direction="maximize")
    facts = DataFacts("demo", ("a", "b", "c"), train_images=400, val_images=194, val_per_class=(14, 150, 30))
    study.set_user_attr("data_facts", facts.to_json())
    for i, value in enumerate(values):
        attrs = {"fold_values": folds[i]} if folds else {}
        study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3 * (i + 1)}, distributions={"lr": LR},
                                                  value=value, user_attrs=attrs))  # fmt: skip


def test_status_names_the_trials_the_split_cannot_rank_against_the_best(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEARCH_HOME", str(tmp_path))
    moves = (1 / 27 + 1 / 301) / 3  # one image of the 14 taken for the largest class
    _near_study(tmp_path, [0.90, 0.90 - moves / 2, 0.80, 0.90 - moves * 0.9], None)
    assert main(["status", "--study", "near"]) == 0
    out = capsys.readouterr().out
    assert f"  noise: one validation image of the rarest class (a, 14 images) moves macro-F1 by {moves:.4f}" in out
    assert f"  trials 1 and 3 are within one validation image of the best ({moves:.4f}): this split cannot rank " \
           "them" in out  # fmt: skip


def test_status_names_the_trials_within_a_standard_error_of_a_cross_validated_best(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEARCH_HOME", str(tmp_path))
    best = [0.80, 0.90, 0.85, 0.75, 0.70]
    error = float(np.std(best, ddof=1) / math.sqrt(5))
    _near_study(tmp_path, [0.80, 0.80 - error * 1.01, 0.80 - error * 0.99], [best, best, best])
    assert main(["status", "--study", "near"]) == 0
    out = capsys.readouterr().out
    assert f"  trial 2 is within one standard error of the best ({error:.4f}, from its folds)" in out, out
