"""A worker's scratch folder: where its running trial's checkpoint waits until it is stored."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from training import make_folder, process_alive


@contextlib.contextmanager
def scratch_folder(root: Path) -> Iterator[Path]:
    """This worker's folder under ``root`` for its running trial's checkpoint until it is stored,
    removed when the worker ends, however it ends, with ``root`` and its parent if that leaves them
    empty. Named by machine and process, so the workers of many machines sharing ``root`` (beside a
    shared artifact folder) never meet; what a killed worker of this machine left is removed by the
    next one to start here. The folder exists from the start, so while a worker runs, ``root`` is
    not empty and no other worker's removal of it can take the folder away mid-trial."""
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        for left in root.iterdir():
            name, _, pid = left.name.rpartition("-")
            if name == host and pid.isdigit() and not process_alive(int(pid)):
                shutil.rmtree(left, ignore_errors=True)
    folder = root / f"{host}-{os.getpid()}"
    with contextlib.suppress(OSError):  # a parent that another worker removed (empty) on the way: once more
        folder.mkdir(parents=True, exist_ok=True)
    make_folder(folder, "the worker's scratch folder", "give another --artifacts (it is made beside it)")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for emptied in (root, root.parent):
            with contextlib.suppress(OSError):  # not empty: another worker's folder is there
                os.rmdir(emptied)
