"""``search best``: the best trial's number, value, params and metrics, as JSON."""

from __future__ import annotations

import argparse
import json

from search.commands import arguments

HELP = "the best trial's params and metrics, as JSON"
SHARED = ("storage",)
EXAMPLES = """examples:
  search best --study lr-sweep
  search best --study lr-sweep | jq .params
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.study(parser)


def take_action(args: argparse.Namespace) -> int:
    from search.ranking import chosen, configuration_of
    from search.record import TrialRecord, collapse_text
    from search.study.inputs import data_facts
    from search.study.recorded import objective

    study = arguments.open_study(args)
    trial = chosen(study, None)
    facts = data_facts(study.user_attrs)
    names = facts.class_names if facts else None
    shown = {k: v for k, v in trial.user_attrs.items() if k not in ("config", "confusion_matrix")}
    kept = TrialRecord.of(trial)
    if kept.per_class_f1 and names and len(names) == len(kept.per_class_f1):  # each class's F1 by its name
        shown["per_class_f1"] = dict(zip(names, kept.per_class_f1))
    if (sd := kept.fold_sd()) is not None:  # cross-validated: fold_values is among them, and their spread
        shown["fold_sd"] = sd
    if collapse := kept.collapse():
        shown["learned_nothing"] = collapse_text(collapse, names)
    result = {"number": trial.number, "objective": objective(study.user_attrs), "value": trial.value,
              "params": trial.params, "metrics": shown}  # fmt: skip
    runs = configuration_of(study.get_trials(deepcopy=False), trial)
    if runs is not None and runs.sd is not None:  # confirmed: ranked by the mean of its runs
        result["confirmed"] = runs.as_json()
    print(json.dumps(result, indent=2))
    return 0
