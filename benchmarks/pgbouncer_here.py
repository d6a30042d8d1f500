"""A PgBouncer of its own on this machine, in front of a PostgreSQL server, configured from the
shipped ``deploy/pgbouncer/pgbouncer.ini`` (its pool settings as users get them; listening on a
free local port, trusting local users, its files in a folder of its own). Used by
``storage_scale.py`` and by the tests, which run the real daemon (Debian's ``pgbouncer``)."""

from __future__ import annotations

import configparser
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

SHIPPED = Path(__file__).resolve().parent.parent / "deploy" / "pgbouncer" / "pgbouncer.ini"


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def config_text(server_url: str, folder: Path, port: int, **overrides: object) -> str:
    """The shipped settings, pointed at ``server_url``'s database, with ``overrides``."""
    shipped = configparser.ConfigParser(inline_comment_prefixes=(";",))
    shipped.read(SHIPPED)
    server = make_url(server_url)
    settings = dict(shipped["pgbouncer"]) | {
        "listen_addr": "127.0.0.1",
        "listen_port": port,
        "unix_socket_dir": "",
        "auth_type": "trust",
        "auth_file": folder / "users.txt",
        "logfile": folder / "pgbouncer.log",
        "pidfile": folder / "pgbouncer.pid",
        "admin_users": server.username,
        "stats_period": 5,
    }
    settings |= overrides
    target = f"host={server.host} port={server.port or 5432} dbname={server.database}"
    lines = ["[databases]", f"{server.database} = {target}", "[pgbouncer]"]
    lines += [f"{key} = {value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def pgbouncer(server_url: str, **overrides: object) -> Iterator[str]:
    """A running PgBouncer in front of ``server_url``; yields the URL workers give instead. Run as
    root, it drops to the ``postgres`` user (PgBouncer refuses to run as root)."""
    binary = pgbouncer_binary()
    if binary is None:
        raise RuntimeError("pgbouncer is not installed: apt-get install pgbouncer")
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    port = _free_port()
    user = make_url(server_url).username
    (folder / "pgbouncer.ini").write_text(config_text(server_url, folder, port, **overrides))
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        for path in folder.iterdir():
            shutil.chown(path, "postgres")
        command[1:1] = ["-u", "postgres"]
    # its log goes to the log file; stderr, unread, would fill its pipe and stop the daemon
    command.insert(1, "--quiet")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, process, folder)
        yield make_url(server_url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        if process.poll() is None:
            process.kill()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_listening(port: int, process: subprocess.Popen, folder: Path, limit: float = 10) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (folder / "pgbouncer.log").read_text() if (folder / "pgbouncer.log").exists() else ""
            raise RuntimeError(f"pgbouncer exited {process.returncode}: {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on port {port} within {limit} s")
