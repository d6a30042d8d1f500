"""The search space is one description by dotted path: any field of the training settings can be
searched, and sampling, grids, recorded distributions, the setup check and the trained config all
read the same walk of it."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.study import STUDIES_DIR, load_study
from search.study.distributions import grid_space, sample, space_distributions
from search.study.recorded import changed_setup
from tests.conftest import TINY, search_here
from training import ConfigError
from training.checkpoint import read_meta

WIDER = ["space.model.drop_rate={low: 0.0, high: 0.5}", "space.train.optimizer.weight_decay={low: 0.0, high: 0.1}"]


@pytest.mark.slow
def test_fields_named_by_path_are_trial_params_and_land_in_the_trained_config(tmp_path):
    """Searching a field no code lists: ``model.drop_rate`` and ``train.optimizer.weight_decay`` in
    a study file, the second under its stable column ``weight_decay``."""
    raw = yaml.safe_load((STUDIES_DIR / "lr-sweep.yaml").read_text())
    raw["space"] |= {
        "model.drop_rate": {"low": 0.0, "high": 0.5},
        "train.optimizer.weight_decay": {"low": 0.0, "high": 0.1},
    }
    raw |= {"enqueue": [], "pruner": {"name": "none"}}
    study_file = tmp_path / "wider.yaml"
    study_file.write_text(yaml.safe_dump(raw))
    env = {"SEARCH_HOME": str(tmp_path / "home")}
    run = search_here("run", "--study", str(study_file), "--n-trials", "2", *TINY, "--set", "train.epochs=1", env=env)
    assert run.returncode == 0, run.stderr
    trials = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/home/studies.db").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:
        assert {"model.drop_rate", "weight_decay", "lr", "loss", "scheduler"} <= set(trial.params)
        trained = json.loads(trial.user_attrs["config"])
        assert trained["model"]["drop_rate"] == trial.params["model.drop_rate"]
        assert trained["optimizer"]["weight_decay"] == trial.params["weight_decay"]
        assert trained["optimizer"]["lr"] == trial.params["lr"] and trained["loss"]["name"] == trial.params["loss"]
    best = max(trials, key=lambda t: t.value)
    header = read_meta(tmp_path / "home" / "artifacts" / best.user_attrs["checkpoint_artifact"])
    assert header["config"]["model"]["drop_rate"] == best.params["model.drop_rate"]
    status = search_here("status", "--study", "lr-sweep", env=env).stdout
    assert "model.drop_rate" in status and "weight_decay" in status


def test_every_use_of_the_space_walks_the_same_description():
    spec = load_study("lr-sweep", WIDER)
    names = [param.name for param in spec.space.params()]
    assert names == ["lr", "weight_decay", "accumulation_steps", "scheduler", "loss", "model.drop_rate"]  # sampled so
    assert {"model.drop_rate", "train.optimizer.weight_decay", "train.loss.name"} <= spec.space.sampled_paths()
    assert {"model.drop_rate", "weight_decay", "focal_gamma"} <= {name for name, _ in space_distributions(spec.space)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    params = sample(study.ask(), spec.space)
    assert (
        0.0 <= params["model.drop_rate"] <= 0.5
        and spec.trial_config(params, None).model.drop_rate == params["model.drop_rate"]
    )
    # a searched field may differ from the recorded spec; a field not searched may not
    recorded = load_study("lr-sweep").model_dump(mode="json")
    assert changed_setup(recorded, load_study("lr-sweep", [*WIDER, "model.drop_rate=0.3"])) == []
    assert changed_setup(recorded, load_study("lr-sweep", ["model.drop_rate=0.3"])) == [("model.drop_rate", 0.0, 0.3)]
    grid = load_study(
        "lr-sweep", ["space={lr: {choices: [0.01]}, train.batch_size: {choices: [16, 32]}}", "enqueue=[]"]
    )
    assert grid_space(grid.space) == {"lr": [0.01], "train.batch_size": [16, 32]}


def test_the_flat_and_the_nested_forms_are_one_space_and_queued_trials_name_fields_by_column():
    flat = load_study("lr-sweep", ["space.model.drop_rate={low: 0.0, high: 0.5}"])  # --set writes it nested
    nested = load_study("lr-sweep", ["space={lr: {low: 0.001, high: 0.01}, model: {drop_rate: {low: 0.0, high: 0.5}}}",
                                     "enqueue=[{lr: 0.003, model.drop_rate: 0.1}]"])  # fmt: skip
    assert flat.space["model.drop_rate"] == nested.space["model.drop_rate"]
    assert [p.name for p in nested.space.params()] == ["lr", "model.drop_rate"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("space.train.optimizer.weight_dacay={low: 0.0, high: 0.1}",
         "space.train.optimizer.weight_dacay: train.optimizer has no field 'weight_dacay' (did you mean "
         "train.optimizer.weight_decay?)"),
        ("space.data.val_ratio={low: 0.1, high: 0.3}", "data.* cannot be searched"),
        ("space.train.device={choices: [cpu, cuda]}", "train.device is how a machine trains, not what"),
        ("space.model.drop_rate={low: 0.0, high: 1.5}", "1.5 is not a value of model.drop_rate: Input should be less"),
        ("space.train.batch_size={choices: [0, 32]}", "0 is not a value of train.batch_size"),
        ("space.train.optimizer.lr={low: 0.001, high: 0.01}", "which space.lr searches too: give it once"),
        ("space.lr={step: {}, cosine: {}}", "train.optimizer.lr is one value, not a setting chosen by name"),
        ("space.dropout={low: 0.0, high: 0.5}", "space.dropout: not a field of the training settings; give its path"),
    ],
)  # fmt: skip
def test_a_space_that_does_not_fit_the_training_settings_is_one_line(override, message):
    with pytest.raises(ConfigError) as refused:
        load_study("lr-sweep", [override])
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert f"lr-sweep.yaml with --set {override.split('=')[0]}" in str(refused.value)
