"""`search delete`: a study and every file it stored, and nothing of another."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import TINY, optuna_cli, search_here


@pytest.mark.slow
def test_delete_removes_a_study_and_every_file_it_stored_and_nothing_of_another(tmp_path):
    env = {"SEARCH_HOME": str(tmp_path)}
    two = ["--study", "lr-sweep", "--n-trials", "2", *TINY, "--set", "pruner={name: none}", "--set", "enqueue=[]"]
    assert search_here("run", *two, "--set", "name=kept", env=env).returncode == 0
    kept = {p.name for p in (tmp_path / "artifacts").iterdir()}
    assert search_here("run", *two, "--set", "name=gone", env=env).returncode == 0
    theirs = {p.name for p in (tmp_path / "artifacts").iterdir()} - kept
    assert len(theirs) >= 3  # two checkpoints and the pictures of the trials' notes
    url = f"sqlite:///{tmp_path}/studies.db"
    running = optuna.load_study(study_name="gone", storage=url).ask()  # a worker still at it
    busy = search_here("delete", "--study", "gone", "--yes", env=env)
    assert busy.returncode == 1 and f"has running trials ({running.number}); stop its workers first" in busy.stderr
    optuna.load_study(study_name="gone", storage=url).tell(running, state=TrialState.FAIL)

    asked = search_here("delete", "--study", "gone", env=env)
    assert asked.returncode == 2 and "pass --yes" in asked.stderr
    assert f"study 'gone' (3 trials) and its {len(theirs)} stored files" in asked.stderr
    assert {p.name for p in (tmp_path / "artifacts").iterdir()} == kept | theirs  # nothing deleted yet
    done = search_here("delete", "--study", "gone", "--yes", env=env)
    assert done.returncode == 0 and "deleted study 'gone'" in done.stderr, done.stderr
    assert {p.name for p in (tmp_path / "artifacts").iterdir()} == kept
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["kept"]
    assert "kept" in optuna_cli("studies", "--storage", url)  # the plain CLI still reads what is left
