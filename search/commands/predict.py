"""``search predict``: a submission CSV from a checkpoint (or an ensemble of them) and a folder of images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.commands import arguments

HELP = "predict a folder of images with a checkpoint or an ensemble, into a CSV"
SHARED = ("quiet",)
EXAMPLES = """examples:
  search predict --checkpoint best.safetensors --images eval/images --info eval/info.csv --out submission.csv
  search predict --checkpoint final/*.safetensors --images eval/images --out predictions.csv --tta
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, nargs="+", metavar="FILE",
        help="a checkpoint written by search export; several: their class probabilities averaged (an ensemble); "
        "a folder written by search ensemble: its fold models, by its weights",
    )  # fmt: skip
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of the images to predict")
    parser.add_argument("--info", metavar="CSV", help="the competition's info.csv (ImageID,ans): fill ans in its order")
    parser.add_argument("--out", required=True, metavar="CSV", help="the CSV to write")
    parser.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    parser.add_argument("--batch-size", type=arguments.count(1), default=256, help="images per batch (default 256)")
    parser.add_argument("--force", action="store_true", help="overwrite --out")


def take_action(args: argparse.Namespace) -> int:
    from search.submission import write_predictions

    rows = write_predictions(
        [Path(c) for c in args.checkpoint], Path(args.images), Path(args.out),
        info=Path(args.info) if args.info else None, flip_tta=args.tta, batch_size=args.batch_size,
        quiet=args.quiet, force=args.force,
    )  # fmt: skip
    print(f"{rows} predictions written to {args.out}", file=sys.stderr)
    return 0
