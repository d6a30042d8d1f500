"""``search report``: one static HTML page on a study's data, its best model and its search."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.commands import arguments

HELP = "write one HTML page on a study's data, its best model and its search"
SHARED = ("storage", "artifacts")
EXAMPLES = """examples:
  search report --study lr-sweep --out report/
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.study(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for index.html and its pictures")


def take_action(args: argparse.Namespace) -> int:
    from search.report.page import write_report

    page = write_report(arguments.open_study(args), arguments.artifact_store(args), Path(args.out))
    print(f"report written to {page}", file=sys.stderr)
    return 0
