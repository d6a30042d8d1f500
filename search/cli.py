"""The ``search`` command: one subcommand per module of ``search.commands``; ``main`` turns every
project error into one line and its exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from search import console
from search.commands import COMMANDS, arguments


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what, and where to look), exit code 2, and help
    starts with the line that says what the command does."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")

    def format_help(self) -> str:
        lines = super().format_help()
        if not self.description:
            return lines
        return f"{self.description}\n\n" + lines.replace(f"\n{self.description}\n", "", 1)


def _version() -> str:
    try:
        return version("search-service")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    commands = "\n".join(f"  {name:10} {module.HELP}" for name, module in COMMANDS.items())
    parser = _Parser(
        prog="search",
        description="Hyperparameter search for timm image classifiers, on Optuna.",
        epilog=f"commands:\n{commands}\n\nsearch COMMAND --help says more of each.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"search {_version()}", help="print the version")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", help="one of the commands below", parser_class=_Parser
    )
    for name, module in COMMANDS.items():
        command = sub.add_parser(
            name, description=module.HELP, epilog=module.EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(command)
        arguments.shared(command, module.SHARED)
    return parser


def entry() -> None:
    """The ``search`` command (and ``python -m search``): ``main``, then out at once. Python's own
    teardown of what a run imported (torch, timm, matplotlib) takes 1-2 s on 2 cores after the work
    is done and written; nothing of ours waits for it (the workers, the drawing process and the
    storage are finished by then). An exception ``main`` lets through (``--debug``) exits as usual."""
    code = main()
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader went away after main's last write
        code = code or 141
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # argparse has printed its one-line usage error, or the help
        return int(exit.code or 0)
    if args.command is None:  # `search` alone: what it can do
        parser.print_help()
        return 0
    console.configure(debug=args.debug)
    return console.exit_code(lambda: COMMANDS[args.command].take_action(args), debug=args.debug)
