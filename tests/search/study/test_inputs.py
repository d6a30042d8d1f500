"""What a study records of its inputs: the data's facts, written where they are new."""

from __future__ import annotations

from types import SimpleNamespace

import optuna

from search.study.inputs import FACTS_ATTR, record_facts
from training import DataFacts
from training.data.facts import LeftOut


def test_facts_that_differ_only_by_where_the_data_is_mounted_are_recorded_once():
    def facts(root: str, count: int = 1) -> DataFacts:
        broken = LeftOut("unreadable image", (f"{root}/000002_male_Asian_45/mask2.jpg",), count)
        return DataFacts(root, ("a", "b"), train_images=80, val_images=20, val_per_class=(5, 15), left_out=(broken,))

    study = optuna.create_study()
    record_facts(study, SimpleNamespace(facts=facts("/data/train/images")))
    first = study.user_attrs[FACTS_ATTR]
    record_facts(study, SimpleNamespace(facts=facts("/mnt/shared/train/images")))  # another machine's mount
    assert study.user_attrs[FACTS_ATTR] == first
    record_facts(study, SimpleNamespace(facts=facts("/mnt/shared/train/images", count=2)))  # new facts
    assert DataFacts.from_json(study.user_attrs[FACTS_ATTR]).left_out[0].count == 2
