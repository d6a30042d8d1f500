"""``search export``: a trial's checkpoint, or the best K for an ensemble, as files plain timm loads."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.commands import arguments

HELP = "write a trial's checkpoint, or the best K's, as files plain timm loads"
SHARED = ("storage", "artifacts")
EXAMPLES = """examples:
  search export --study mask-lr-sweep --top 5 --all-data --out final/
  search export --study mask-cv --folds --out folds/
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.study(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--trial", type=arguments.count(0), metavar="N", help="trial number (default: the best)")
    which.add_argument(
        "--top", type=arguments.count(1), metavar="K", help="the K best trials, into the folder --out (an ensemble)"
    )
    parser.add_argument("--out", required=True, help="the checkpoint file (with --top, the folder) to write")
    parser.add_argument("--force", action="store_true", help="overwrite what --out names")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--retrain", action="store_true", help="train the trial again where no checkpoint is stored")
    how.add_argument(
        "--all-data", action="store_true",
        help="train the trial's params again on all the data (its validation split too) up to its best epoch",
    )  # fmt: skip
    how.add_argument(
        "--folds", action="store_true",
        help="a cross-validated trial's fold models, into the folder --out (search predict averages them)",
    )  # fmt: skip


def take_action(args: argparse.Namespace) -> int:
    from search.handover import Export, export_top, export_trial
    from search.record import TrialRecord, shown_as
    from search.study.recorded import objective

    study, store, out = arguments.open_study(args), arguments.artifact_store(args), Path(args.out)
    if args.folds:
        return _export_folds(study, store, out, args)
    mode = Export.ALL_DATA if args.all_data else Export.RETRAIN if args.retrain else Export.STORED
    if args.top is not None:
        exported = export_top(study, store, out, args.top, mode=mode, force=args.force)
    else:
        exported = [(export_trial(study, store, out, number=args.trial, mode=mode, force=args.force), out)]
    label = shown_as(objective(study.user_attrs))
    for trial, path in exported:
        value = f"{trial.value:.4f}" if trial.value is not None else "n/a"
        if mode is Export.ALL_DATA:
            last = TrialRecord.of(trial).best_epoch
            print(f"trial {trial.number}'s params trained on all the data for epochs 0 to {last}, its best "
                  f"(its {label} then {value}), exported to {path}")  # fmt: skip
        else:
            print(f"trial {trial.number} ({label} {value}) exported to {path}")
    if args.top is not None and len(exported) < args.top:
        print(f"only {len(exported)} complete trial(s) in '{study.study_name}'; all exported", file=sys.stderr)
    return 0


def _export_folds(study, store, out: Path, args: argparse.Namespace) -> int:
    from search.handover import export_folds
    from search.record import TrialRecord

    if args.top is not None:
        print("search export: error: --folds writes one trial's fold models, not with --top (for several "
              "trials' folds, search ensemble); see search export --help", file=sys.stderr)  # fmt: skip
        return 2
    trial, paths = export_folds(study, store, out, number=args.trial, force=args.force)
    spread = TrialRecord.of(trial).spread()
    print(f"trial {trial.number}'s {len(paths)} fold models{f' ({spread})' if spread else ''} exported to {out}")
    return 0
