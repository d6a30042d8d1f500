"""Optuna's private names where this package expects them, and the public API's answers where a
release moved them."""

from __future__ import annotations

import optuna

from search.store import _internals, _stale, open_storage


def test_the_private_names_of_optuna_the_project_uses_are_where_it_expects(tmp_path):
    """Fails on an Optuna release that moved them: the project still works (through the fallbacks
    below), but slower (one commit per attribute) and without the list of stale trials."""
    assert not _internals.MISSING, (
        f"Optuna {optuna.__version__} has no {', '.join(_internals.MISSING)}: search falls back to Optuna's "
        "public API (a trial's attributes one commit each, no stale-trial list); update search/store/_internals.py"
    )
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/studies.db"))
    trial = study.ask()
    for thing, name in (
        (trial, "_trial_id"),
        (trial, "_cached_frozen_trial"),
        (study, "_study_id"),
        (study, "_storage"),
    ):
        assert hasattr(thing, name), f"Optuna {optuna.__version__} moved {type(thing).__name__}.{name}"
    assert _internals.rdb_storage(study._storage) is not None, "Optuna's cache no longer keeps its storage as _backend"


def test_without_the_private_names_the_public_api_answers(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/studies.db"
    study = optuna.create_study(storage=open_storage(url, heartbeat_interval=1, grace_period=1), study_name="s")
    trial = study.ask()
    storage = study._storage
    private = (_internals.trial_id(trial), _internals.study_id(study, storage))

    # a trial and a study as the public API sees them: no private ids
    public_study = type("Study", (), {"study_name": "s"})()
    public_trial = type("Trial", (), {"number": trial.number, "study": public_study, "storage": storage})()
    assert (_internals.trial_id(public_trial), _internals.study_id(public_study, storage)) == private
    monkeypatch.setattr(_internals, "MISSING", ["a private name this Optuna lacks"])
    assert _stale.stale_trial_numbers(study._storage, "s") == set()  # not known, and no error
