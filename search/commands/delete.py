"""``search delete``: a study and every file it stored (checkpoints, pictures), which Optuna's own
``delete-study`` leaves in the artifact folder under names that do not say whose they are."""

from __future__ import annotations

import argparse
import sys

from search.commands import arguments

HELP = "delete a study and every file it stored (checkpoints, pictures)"
SHARED = ("storage", "artifacts")
EXAMPLES = """examples:
  search delete --study lr-sweep          (says what it would delete)
  search delete --study lr-sweep --yes
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.study(parser)
    parser.add_argument("--yes", action="store_true", help="delete (without it: say what would be deleted)")


def take_action(args: argparse.Namespace) -> int:
    from search.store import load_existing, open_storage, resolve_storage_url
    from search.study_files import delete_study

    storage = open_storage(resolve_storage_url(args.storage))
    study = load_existing(storage, args.study)
    print(delete_study(storage, study, arguments.artifact_store(args), yes=args.yes), file=sys.stderr)
    return 0
