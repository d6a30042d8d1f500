"""The arguments commands share: the storage, the artifact folder, the study, and argparse types
that make a bad number a usage error naming it."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def shared(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """The options a command shares with others, of ``storage``, ``artifacts`` and ``quiet``, and
    ``--debug`` (every command has it)."""
    if "storage" in names:
        parser.add_argument(
            "--storage", metavar="URL",
            help="SQLAlchemy URL of the studies' database (default: $SEARCH_STORAGE, else .search/studies.db)",
        )  # fmt: skip
    if "artifacts" in names:
        parser.add_argument(
            "--artifacts", metavar="DIR",
            help="folder of the stored checkpoints and pictures (default: $SEARCH_ARTIFACTS, else .search/artifacts)",
        )  # fmt: skip
    if "quiet" in names:
        parser.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and Optuna's own log")


def study(parser: argparse.ArgumentParser, text: str = "the study's name in the storage") -> None:
    parser.add_argument("--study", required=True, metavar="NAME", help=text)


def overrides(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE``, repeatable: a field of the study file overridden, the value read as YAML."""
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a field of the study file, the value read as YAML (repeatable)",
    )  # fmt: skip


def count(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``minimum`` (to ``maximum``), else a usage error naming it."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f"{minimum} or more"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:  # also NaN
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def open_study(args: argparse.Namespace):
    """The study ``--study`` names, in the storage ``--storage`` names (one that must exist)."""
    from search.store import load_existing, open_storage, resolve_storage_url

    return load_existing(open_storage(resolve_storage_url(args.storage)), args.study)


def artifact_store(args: argparse.Namespace):
    """The artifact store of ``--artifacts``."""
    from search.store import AtomicArtifactStore, artifact_dir

    return AtomicArtifactStore(artifact_dir(args.artifacts))
