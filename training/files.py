"""Files the project hands to its users (checkpoints, predictions): whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from training.errors import DiskError


def make_folder(path: Path, what: str, instead: str) -> Path:
    """``mkdir -p path``; a failure (a file of that name on the way, no permission, no such place)
    is one ``DiskError``: cannot make ``what`` ``path``, why, and ``instead`` (what to do)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DiskError(f"cannot make {what} {path}: {error.strerror or error}; {instead}") from None
    return path


def process_alive(pid: int) -> bool:
    """Whether a process of this machine has ``pid``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def make_readable(path: str | Path) -> None:
    """What ``open()`` would have given (0666 less the umask): mkstemp's files are owner-only."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def replacing(path: Path, what: str) -> Iterator[Path]:
    """A temporary file beside ``path`` for the block to write; when the block ends it replaces
    ``path`` (synced, and readable as ``open()`` would make it), when it fails it is removed, so a
    crash leaves the old file or the new one, never half of one. Its folder is made if missing. An
    ``OSError`` on the way (no such place, a folder of that name, no permission, a full disk) is one
    ``DiskError`` naming ``what`` and ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
    except OSError as error:
        raise DiskError(f"could not write {what} {path}: {error.strerror or error}") from None
    try:
        yield Path(temporary)
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        make_readable(temporary)
        os.replace(temporary, path)
    except OSError as error:
        raise DiskError(f"could not write {what} {path}: {error.strerror or error}") from None
    finally:
        Path(temporary).unlink(missing_ok=True)
