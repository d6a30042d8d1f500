"""``search lr-find``: a study's lr-find (the learning-rate range test), before it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.commands import arguments

HELP = "a learning-rate range test of a study: the lr range worth searching, and its plot"
SHARED = ()
EXAMPLES = """examples:
  search lr-find --study lr-sweep
  MASK_DATA=/data/train search lr-find --study mask-lr-sweep --out plots/
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.study(parser, "a study file: a name in ./studies or the project's studies/, or a YAML path")
    parser.add_argument("--out", default=".", metavar="DIR", help="folder for the plot (default: here)")
    arguments.overrides(parser)


def take_action(args: argparse.Namespace) -> int:
    from search import lr_find
    from search.study import load_study
    from training import make_folder

    spec = load_study(args.study, args.set)
    folder = make_folder(Path(args.out), "the --out folder", "give --out a folder that can be written")
    test = lr_find.find(spec)
    plot = lr_find.draw(test, folder / f"lr-find-{spec.name}.png", f"{spec.name}: {spec.model.name}, lr-find")
    print("\n".join([*lr_find.summary(spec, test), f"plot: {plot}"]))
    return 0
