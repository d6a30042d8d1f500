"""`search report`: one static page with its pictures, also early in a study."""

from __future__ import annotations

import re
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import search_here


@pytest.mark.slow
def test_report_is_one_page_with_its_pictures(finished_study, tmp_path):
    out = tmp_path / "report"
    assert search_here("report", "--study", "lr-sweep", "--out", str(out), env=finished_study["env"]).returncode == 0
    page = (out / "index.html").read_text()
    pictures = re.findall(r'<img src="([^"]+)"', page)
    expected = {"classes.png", "samples.png", "confusion.png", "per_class_f1.png", "value_vs_lr.png", "curves.png"}
    assert expected <= set(pictures)
    assert all((out / p).read_bytes().startswith(b"\x89PNG") for p in pictures)
    study = optuna.load_study(study_name="lr-sweep", storage=finished_study["url"])
    assert f"Best: trial {study.best_trial.number}" in page and "largest / smallest" not in page  # title is in the PNG
    assert "Most confused classes" in page and "<table>" in page
    (tmp_path / "a-file").write_text("x")
    taken = search_here("report", "--study", "lr-sweep", "--out", str(tmp_path / "a-file"), env=finished_study["env"])
    assert taken.returncode == 1 and taken.stderr.strip().splitlines() == [
        f"search: error: cannot make the report folder {tmp_path / 'a-file'}: File exists; give another --out"
    ]


@pytest.mark.slow
def test_report_of_a_study_with_no_complete_trial_yet_shows_what_there_is(finished_study, tmp_path):
    """Asked for early (only pruned or failed trials so far): the page, without a best trial."""
    from optuna.distributions import FloatDistribution

    done = optuna.load_study(study_name="lr-sweep", storage=finished_study["url"])
    storage = f"sqlite:///{tmp_path}/early.db"  # a storage of its own: the shared one keeps its one study
    early = optuna.create_study(study_name=f"early-{uuid.uuid4().hex[:6]}", storage=storage, direction="maximize")
    early.set_user_attr("spec", done.user_attrs["spec"])
    early.add_trial(optuna.trial.create_trial(
        state=TrialState.PRUNED, params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1e-1, log=True)},
        intermediate_values={0: 0.3, 1: 0.4},
    ))  # fmt: skip
    oom = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    for reason in [oom, "loss became nan at epoch 1"] * 2:
        early.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"failure_reason": reason}))
    out = tmp_path / "report"
    run = search_here("report", "--study", early.study_name, "--storage", storage, "--out", str(out),
                      env=finished_study["env"])  # fmt: skip
    assert run.returncode == 0, run.stderr
    page = (out / "index.html").read_text()
    assert "1 pruned" in page and "No trial has completed yet" in page and "confusion.png" not in page
    failed = re.search(r"<h3>Failed trials</h3><table>(.*?)</table>", page)
    assert failed, page[-2000:]
    cells = [re.sub(r"<[^>]+>", "", row).strip() for row in re.findall(r"<td[^>]*>(.*?)</td>", failed.group(1))]
    assert cells == [oom, "2", "1, 3", "loss became nan at epoch 1", "2", "2, 4"]
    assert {"classes.png", "samples.png", "curves.png"} <= set(re.findall(r'<img src="([^"]+)"', page))
