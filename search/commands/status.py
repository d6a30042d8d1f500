"""``search status``: what a study trains, its trials by state, the running and failed ones, the best
so far, the top trials and what mattered."""

from __future__ import annotations

import argparse

from search.commands import arguments

HELP = "what a study trains, its trials by state, the best ones and what mattered"
SHARED = ("storage",)
EXAMPLES = """examples:
  search status --study lr-sweep
  search status --study mask-lr-sweep --top 20 --storage postgresql+psycopg2://search@db/search
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.study(parser)
    parser.add_argument("--top", type=arguments.count(1), default=10, metavar="K", help="how many top trials (10)")


def take_action(args: argparse.Namespace) -> int:
    from search.store import load_existing, open_storage, resolve_storage_url, stale_trial_numbers
    from search.summary import status_text

    storage = open_storage(resolve_storage_url(args.storage))
    study = load_existing(storage, args.study)
    print(status_text(study, top=args.top, stale=stale_trial_numbers(storage, args.study)))
    return 0
