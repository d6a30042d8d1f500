"""``search ensemble``: an out-of-fold ensemble of a cross-validated study's top trials, picked by
their pooled out-of-fold predictions, written as fold models with weights for ``search predict``."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.commands import arguments

HELP = "pick an ensemble among a cross-validated study's top trials, by their out-of-fold predictions"
SHARED = ("storage", "artifacts")
EXAMPLES = """examples:
  search ensemble --study mask-cv --top 5 --out ensemble/
  search predict --checkpoint ensemble/ --images eval/images --info eval/info.csv --out submission.csv
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.study(parser)
    parser.add_argument("--top", type=arguments.count(1), default=5, metavar="N",
                        help="choose among the N best complete trials (default 5; retention keeps the files of "
                        "checkpoints.keep_top_k)")  # fmt: skip
    parser.add_argument("--rounds", type=arguments.count(1), default=20, metavar="R",
                        help="rounds of greedy selection, each adding one member (default 20)")  # fmt: skip
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder for the fold models and ensemble.json")
    parser.add_argument("--force", action="store_true", help="overwrite an ensemble in --out")


def take_action(args: argparse.Namespace) -> int:
    from search.ensemble import build_ensemble
    from search.record import shown_as
    from search.study.recorded import objective

    study = arguments.open_study(args)
    chosen = build_ensemble(study, arguments.artifact_store(args), Path(args.out), top=args.top, rounds=args.rounds,
                            force=args.force)  # fmt: skip
    label = shown_as(objective(study.user_attrs))
    members = ", ".join(
        f"trial {n} × {chosen.share(n):.2f}" for n in sorted(chosen.weights, key=chosen.share, reverse=True)
    )
    single, single_value = chosen.best_single
    print(f"ensemble of {members}: out-of-fold {label} {chosen.value:.4f}, against {single_value:.4f} for its best "
          f"single member, trial {single} ({chosen.value - single_value:+.4f})")  # fmt: skip
    print(f"written to {args.out}: search predict --checkpoint {args.out} averages its fold models by these weights")
    return 0
