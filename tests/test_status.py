"""`search status` ranks what mattered, from the study's own trials (PED-ANOVA), once enough finished."""

from __future__ import annotations

import math
import random
import re

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from search.cli import main

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
    assert "best: trial" in out and _importance_lines(out) == []
    assert out.startswith("study lr-sweep: 3 trials\n")  # made by plain Optuna: no spec to say what it trains


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
