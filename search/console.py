"""What a command, or a worker it started, says on the terminal: its log lines' format, warnings
and Optuna's log (shown with ``--debug``), and every project error as one line and an exit code."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from training import Said, SearchServiceError


def configure(*, prefix: str = "", debug: bool = False) -> None:
    """Log lines as ``[prefix]search: message``; Python's warnings and Optuna's own log only with ``debug``."""
    logging.basicConfig(level=logging.WARNING, format=f"{prefix}search: %(message)s")
    # huggingface_hub (timm's pretrained weights) prints its warnings (a download's retries) through
    # a handler of its own and again through ours: once, with our prefix, is enough.
    logging.getLogger("huggingface_hub").handlers.clear()
    if not debug:
        warnings.simplefilter("ignore")
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.ERROR)


_SAID = Said()  # the data notes said by this process, one entry per data set (training/per_process.py)


def say_data_notes(notes: Sequence[str]) -> None:
    """What a data set's listing and decode left out (skipped folders and images, a class without
    validation images), as warnings, once per process: an export or a report prepares the same data
    for each trial it trains."""
    if not _SAID.first_time(tuple(notes)):
        return
    for note in notes:
        logging.getLogger("search").warning("%s", note)


def exit_code(action: Callable[[], int], *, debug: bool = False) -> int:
    """``action()``'s exit code. A project error is its one line and its exit code (``debug``: the
    traceback too), and so is a database that went away where nothing waited for it; an interrupt
    says whether it marked a trial FAIL; a reader that went away (``search status | head``) ends the
    command quietly."""
    try:
        return action()
    except SearchServiceError as error:
        if debug:
            raise
        print(f"search: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as interrupt:
        trial = getattr(interrupt, "trial", None)
        marked = "no trial was running" if trial is None else f"trial {trial} is marked FAIL (interrupted)"
        print(f"search: interrupted; {marked}; run again to continue", file=sys.stderr)
        return getattr(interrupt, "exit_code", 130)
    except BrokenPipeError:  # nothing more to say to a reader that went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail again
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it
    except Exception as error:
        from search.store import STORAGE_ERRORS, StorageError, describe_db_error

        if debug or not isinstance(error, STORAGE_ERRORS):
            raise
        print(
            f"search: error: the storage failed: {describe_db_error(error)}; run again once it answers", file=sys.stderr
        )
        return StorageError.exit_code
