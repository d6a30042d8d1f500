"""The project's one exception family: every error a user can act on is a ``SearchServiceError``.

It lives here, at the bottom of the project, because both packages raise it: ``training`` for bad
data, disks and losses, ``search`` for studies, storages and commands.
"""

from __future__ import annotations


class SearchServiceError(Exception):
    """An error with a one-line message a user can act on; the command prints it and exits."""

    exit_code = 1


class ConfigError(SearchServiceError):
    """The configuration or the command line is wrong (usage error, exit code 2)."""

    exit_code = 2


class DataError(SearchServiceError):
    """The data set cannot be read: missing root, empty set, a class with no images."""


class DiskError(SearchServiceError):
    """A file could not be written (disk full, no permission): the run stops, nothing half-written stays."""


class NonFiniteLossError(SearchServiceError):
    """The training loss became NaN or infinite; the trial ends, the study goes on."""

    def __init__(self, epoch: int, value: float) -> None:
        super().__init__(f"loss became {value} in epoch {epoch}; lower the learning rate")
        self.epoch = epoch
        self.value = value
