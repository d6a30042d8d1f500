"""``search stop``: every worker running a study finishes its trial and starts no other."""

from __future__ import annotations

import argparse
import sys

from search.commands import arguments

HELP = "let every worker running a study finish its trial and stop"
SHARED = ("storage",)
EXAMPLES = """examples:
  search stop --study lr-sweep
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.study(parser)


def take_action(args: argparse.Namespace) -> int:
    from optuna.trial import TrialState

    from search.store import request_stop

    study = arguments.open_study(args)
    request_stop(study)
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    now = f"finish the {running} running first (search status shows them)" if running else "none is running one now"
    print(
        f"asked the workers of '{study.study_name}' to stop: they start no new trial, and {now}; a run started from "
        "now on goes on",
        file=sys.stderr,
    )
    return 0
