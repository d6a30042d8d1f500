"""``search notebook``: a Jupyter notebook of a study's data, search and best model, that loads the
study from its storage and computes everything again, so that any cell can be changed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from search.commands import arguments

HELP = "write a Jupyter notebook of a study's data, search and best model"
SHARED = ("storage", "artifacts")
EXAMPLES = """examples:
  search notebook --study mask-lr-sweep --out mask.ipynb
  search notebook --study mask-lr-sweep --out mask.ipynb --test-images data/eval --execute
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.study(parser)
    parser.add_argument("--out", required=True, metavar="FILE.ipynb", help="the notebook to write")
    parser.add_argument(
        "--test-images", metavar="DIR",
        help="predict these images with the best model (the competition's eval folder, with its info.csv, or "
        "any folder of images) and write the submission CSV",
    )  # fmt: skip
    parser.add_argument("--execute", action="store_true", help="run it top to bottom in a kernel, keeping the outputs")
    parser.add_argument("--force", action="store_true", help="overwrite --out")


def take_action(args: argparse.Namespace) -> int:
    from search.notebook import execute, write_notebook
    from search.store import artifact_dir, resolve_storage_url
    from search.study import validate_study
    from search.study.recorded import SPEC_ATTR

    study = arguments.open_study(args)  # the study must exist before a notebook is written of it
    spec = validate_study(json.loads(study.user_attrs[SPEC_ATTR]), f"study '{args.study}'")
    out = Path(args.out)
    write_notebook(
        args.study, resolve_storage_url(args.storage), artifact_dir(args.artifacts), out,
        competition=spec.data.source == "competition",
        test_images=Path(args.test_images) if args.test_images else None, force=args.force,
    )  # fmt: skip
    if args.execute:
        print(f"running {out} in a kernel...", file=sys.stderr)
        execute(out)
    print(f"notebook written to {out}; open it with: jupyter lab {out}", file=sys.stderr)
    return 0
