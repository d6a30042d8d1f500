"""Real ``search`` processes started warm: forked from a server that has imported torch, timm and
the project once, as ``search run --workers N`` forks its workers, instead of a new interpreter
that pays those imports again (seconds of a 2-core CPU each time).

Each is a process of its own, with its own pid, signals, exit code and session, as a command
started from a terminal is (its workers and drawing process are in its process group). It runs
what ``python -m search`` runs (``search.cli.entry``) with the arguments, environment and working
folder given, its output in files read back when it ends. For the tests about what a running
command does: those about how one starts, and what it imports, run ``python -m search`` itself.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# What the server imports once: what a ``search run`` imports before its first trial.
PRELOAD = ["torch", "timm", "sklearn.metrics", "albumentations", "search.cli", "search.run.lifecycle"]

_started: list[Launched] = []


def _server() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _run(args: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """In the forked process: become the command, then run it; ``entry`` exits with its code."""
    os.setsid()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for stream, path in ((1, out), (2, err)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(file, stream)
        os.close(file)
    sys.argv = ["search", *args]
    from search.cli import entry

    entry()


class Launched:
    """What ``subprocess.Popen`` offers of a ``search`` command started warm: ``pid``, ``poll``,
    ``wait``, ``send_signal``, ``kill``, ``terminate``, ``returncode`` and ``communicate``."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: str) -> None:
        self._files = tempfile.mkdtemp(prefix="search-warm-")
        self._out, self._err = f"{self._files}/stdout", f"{self._files}/stderr"
        self._process = _server().Process(
            target=_run, args=(list(args), dict(env), cwd, self._out, self._err), name="search"
        )
        self._process.start()
        self.pid = self._process.pid
        self.returncode: int | None = None
        self._said: tuple[str, str] | None = None
        _started.append(self)

    def poll(self) -> int | None:
        if self.returncode is None and not self._process.is_alive():
            self.returncode = self._process.exitcode  # negative where a signal ended it, as Popen's
            self._process.close()  # its pipe to the server
            _started.remove(self)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(["search"], timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Its output and errors: all of them once it has ended (its files then go), what it wrote so
        far while it runs. Past ``timeout`` its process group is killed, as ``subprocess.run`` kills."""
        if self.poll() is None and timeout is not None:
            try:
                self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_group()
                raise
        if self._said is not None:
            return self._said
        said = Path(self._out).read_text(errors="replace"), Path(self._err).read_text(errors="replace")
        if self.returncode is not None:  # all it will say: kept here, and its files go
            self._said = said
            shutil.rmtree(self._files, ignore_errors=True)
        return said

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill_group(self) -> None:
        """It and every process it started (its workers, its fork server, its drawing process)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:  # not its own session yet (just forked), or gone
            self.kill()
        self.wait(30)


def launch(*args: str, env: dict[str, str] | None = None) -> Launched:
    """``search ARGS`` in a warm process, in this folder, with ``env`` (default: this environment)."""
    return Launched(list(args), env if env is not None else dict(os.environ), os.getcwd())


def stop_all() -> None:
    """Kill what the tests left running (a failed test's, with what it started), so that the
    session can end and nothing trains on into the next one."""
    for launched in list(_started):
        with contextlib.suppress(subprocess.TimeoutExpired):
            launched.kill_group()
