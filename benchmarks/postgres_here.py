"""A PostgreSQL server of its own on this machine: a new cluster in a temporary folder, on a free
local port, trusting local users, made and run by the installed server (Debian's ``postgresql``).
``chaos.py`` and its test restart it, as a crash does (``immediate``) or as an operator does
(``fast``), without touching the machine's own server."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def server_binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``, the newest installed; None without a server."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    on_path = shutil.which("initdb")
    return Path(found[-1]).parent if found else (Path(on_path).parent if on_path else None)


# Settings for a server whose data may be lost with the machine (the tests'): no wait for the disk
# at each commit. A restart of the server itself loses nothing (the data is in the system's cache).
NOT_DURABLE = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresHere:
    """A running cluster of its own; ``url`` reaches its ``postgres`` database as user ``postgres``."""

    def __init__(self, folder: Path, port: int, settings: tuple[str, ...] = ()) -> None:
        self.folder, self.port, self.settings = folder, port, settings
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"

    def _run(self, *command: str) -> None:
        """A server command, as the ``postgres`` user where this runs as root (the server refuses root)."""
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")

    def pg_ctl(self, action: str, mode: str = "fast") -> None:
        binary = str(server_binaries() / "pg_ctl")
        settings = " ".join(f"-c {setting}" for setting in ("listen_addresses=127.0.0.1", *self.settings))
        options = f"-p {self.port} -k {self.folder} {settings}"
        self._run(binary, "-D", str(self.folder / "data"), "-l", str(self.folder / "server.log"), "-m", mode,
                  "-o", options, "-w", action)  # fmt: skip

    def restart(self, mode: str = "immediate") -> None:
        """Stopped and started again: ``immediate`` ends every process at once, as a crash does
        (the server then recovers from its write-ahead log); ``fast`` ends sessions cleanly."""
        self.pg_ctl("restart", mode)


@contextlib.contextmanager
def postgres_here(*, durable: bool = True) -> Iterator[PostgresHere]:
    """A new cluster, started; ``durable=False``: without waiting for the disk (``NOT_DURABLE``)."""
    binaries = server_binaries()
    if binaries is None:
        raise RuntimeError("no PostgreSQL server is installed: apt-get install postgresql")
    folder = Path(tempfile.mkdtemp(prefix="postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = PostgresHere(folder, port, () if durable else NOT_DURABLE)
    try:
        server._run(str(binaries / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "-A", "trust", "--no-sync")
        server.pg_ctl("start")
        yield server
    finally:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            server.pg_ctl("stop", "immediate")
        shutil.rmtree(folder, ignore_errors=True)
