"""What the suite needs of the machine, made ready when a run starts, so that the README's test
command passes on a fresh machine by itself.

- Debian's programs the tests start for real (chromium, pgbouncer, Slurm and munge, PostgreSQL's
  server programs): installed with ``apt-get`` where the run is root and one is missing; elsewhere
  one line says the ``apt-get install`` to run, and the tests that need them are skipped (under
  ``CI`` they fail instead: CI must run them all).
- A PostgreSQL server of the suite's own (``postgres_here``), started on first use on a free local
  port and stopped at the end, so that no test depends on a server at a fixed address. Made with
  the installed ``initdb`` and ``pg_ctl`` as ``postgres`` where the run is root: pytest-postgresql,
  the field's plugin for this, runs ``initdb`` as the invoking user, which PostgreSQL refuses to
  root (and these machines run their tests as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from postgres_here import server_binaries  # noqa: E402

# Debian's package -> the programs that show it is installed, as the tests call them
PACKAGES: dict[str, tuple[str, ...]] = {
    "postgresql": ("initdb", "pg_ctl"),
    "pgbouncer": ("pgbouncer",),
    "chromium": ("chromium",),
    "slurm-wlm": ("slurmctld", "slurmd", "sbatch", "sinfo"),
    "munge": ("munged", "mungekey"),
}


APT_SECONDS = 900  # a machine whose package registry does not answer: the suite goes on without them


def _found(program: str) -> bool:
    if program in ("initdb", "pg_ctl"):
        return server_binaries() is not None and (server_binaries() / program).exists()
    return bool(shutil.which(program) or any(os.access(f"{d}/{program}", os.X_OK) for d in ("/usr/sbin", "/sbin")))


def missing() -> list[str]:
    """The Debian packages the suite needs that this machine lacks."""
    return [package for package, programs in PACKAGES.items() if not all(map(_found, programs))]


def apt_line(packages: list[str]) -> str:
    return f"apt-get install -y {' '.join(packages)}"


def install_missing(say) -> None:
    """The missing packages installed where this run may (root, with apt-get, unless
    ``SEARCH_TESTS_INSTALL=0``: a machine without a package registry); else one line that says what
    to run. ``say``: how a line reaches the terminal."""
    packages = missing()
    if not packages:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None or os.environ.get("SEARCH_TESTS_INSTALL") == "0":
        say(f"tests: Debian's {', '.join(packages)} missing; run `sudo {apt_line(packages)}`: the tests that need "
            "them are skipped")  # fmt: skip
        return
    say(f"tests: installing Debian's {', '.join(packages)} for the tests that start them ({apt_line(packages)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=APT_SECONDS)
        except subprocess.TimeoutExpired:
            say(f"tests: `{' '.join(command)}` took over {APT_SECONDS} s: the tests needing them fail or skip")
            return
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            say(f"tests: `{' '.join(command)}` exited {done.returncode} ({last}): the tests needing them fail or skip")
            return


def require(package: str) -> None:
    """Skip the test where this machine lacks ``package`` (under ``CI``: fail it)."""
    if package in missing():
        say = pytest.fail if os.environ.get("CI") else pytest.skip
        say(f"needs Debian's {package}: {apt_line([package])}")
