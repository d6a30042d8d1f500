"""``search confirm``: a study's leading configurations queued again with further seeds, as
confirmation runs that any running or later worker takes, outside the search's budget."""

from __future__ import annotations

import argparse

from search.commands import arguments

HELP = "train the leading configurations again with further seeds, outside the budget, and rank them by their mean"
SHARED = ("storage",)
EXAMPLES = """examples:
  search confirm --study lr-sweep --top 3 --seeds 2
  search run --study lr-sweep       # a worker takes the queued runs (a running one does too)
  search status --study lr-sweep    # confirmed configurations: the mean of their runs, and its spread
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.study(parser)
    parser.add_argument("--top", type=arguments.count(1), default=3, metavar="K",
                        help="confirm the K leading configurations (default 3)")  # fmt: skip
    parser.add_argument("--seeds", type=arguments.count(1), default=2, metavar="N",
                        help="N confirmation runs for each, with further seeds (default 2); runs queued "
                        "before count, so asking again queues nothing twice")  # fmt: skip


def take_action(args: argparse.Namespace) -> int:
    from search.confirm import described, queue_confirmations
    from search.ranking import chosen, configurations
    from search.store import resolve_storage_url
    from search.store.budget import TrialGate

    study = arguments.open_study(args)
    chosen(study, None)  # one line where it has no complete trial yet
    with TrialGate.held(resolve_storage_url(args.storage), study.study_name):  # as the workers queue them
        queued = queue_confirmations(study, args.top, args.seeds)
    if not queued:
        leaders = min(args.top, len(configurations(study.get_trials(deepcopy=False))))
        print(f"the {leaders} leading configuration{'s' if leaders > 1 else ''} of '{study.study_name}' "
              f"have {args.seeds} confirmation runs each, queued or run: nothing queued")  # fmt: skip
        return 0
    runs = sum(len(q.seeds) for q in queued)
    print(f"queued {runs} confirmation run{'s' if runs > 1 else ''}: {described(queued)}")
    print(f"they are outside the budget; a worker of `search run --study {study.study_name}` (a running one "
          "too) takes them, and the study ranks each configuration by the mean of its runs")  # fmt: skip
    return 0
