"""``search best``: the best trial's number, value, params and metrics, as JSON."""

from __future__ import annotations

import argparse
import json

from search.commands import options

HELP = "the best trial's params and metrics, as JSON"
SHARED = ("storage",)
EXAMPLES = """examples:
  search best --study lr-sweep
  search best --study lr-sweep | jq .params
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.study(parser)


def take_action(args: argparse.Namespace) -> int:
    from search.export import choose_trial

    trial = choose_trial(options.open_study(args), None)
    shown = {k: v for k, v in trial.user_attrs.items() if k not in ("config", "confusion_matrix")}
    print(
        json.dumps({"number": trial.number, "value": trial.value, "params": trial.params, "metrics": shown}, indent=2)
    )
    return 0
