"""What a study records of its setup, and what a later run may change."""

from __future__ import annotations

from search.study import load_study
from search.study.recorded import changed_setup


def test_a_changed_setup_is_what_trials_depend_on_and_not_what_the_space_samples():
    spec = load_study("lr-sweep")
    recorded = spec.model_dump(mode="json")
    assert changed_setup(recorded, spec) == []
    sampled = load_study("lr-sweep", ["train.loss.focal_gamma=1.5", "train.optimizer.lr=0.5", "seed=0"])
    assert changed_setup(recorded, sampled) == []  # focal_gamma and lr: each trial samples its own
    faster = load_study("lr-sweep", ["train.cuda_graphs=true", "train.device=cpu", "train.eval_batch_size=64"])
    assert changed_setup(recorded, faster) == []  # how fast a machine trains, not what
    fixed = load_study("lr-sweep", ["train.loss.focal_alpha=[1, 2]", "seed=3", "model.drop_rate=0.2"])
    assert changed_setup(recorded, fixed) == [
        ("seed", 0, 3),
        ("model.drop_rate", 0.0, 0.2),
        ("train.loss.focal_alpha", None, [1, 2]),
    ]
    del recorded["model"]["drop_rate"]  # a key an earlier version did not record
    assert [key for key, _, _ in changed_setup(recorded, fixed)] == ["seed", "train.loss.focal_alpha"]
