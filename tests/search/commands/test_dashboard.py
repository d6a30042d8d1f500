"""optuna-dashboard on our storage, looked at in a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from search.cli import main
from tests.conftest import FOUR, TINY, search_here
from tests.machine import require
from tests.warm import launch

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses listening on ``port``, from /proc (IPv4), e.g. {'127.0.0.1'}."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":  # LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


class Dashboard:
    def __init__(self, home: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "search", "dashboard", "--study", "lr-sweep", "--port", str(self.port)]
        self.process = subprocess.Popen(
            command, env={**os.environ, "SEARCH_HOME": str(home)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                _get(f"{self.url}/api/studies")
                return
            except OSError:
                assert self.process.poll() is None, self.process.communicate()[1][-2000:]
                time.sleep(0.2)
        raise AssertionError("dashboard did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    home = tmp_path_factory.mktemp("dash")
    run = search_here("run", "--study", "lr-sweep", "--n-trials", "3", *TINY, "--set", "train.epochs=2",
                      "--set", "pruner={name: none}", env={"SEARCH_HOME": str(home),
                      "SEARCH_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "cache")})  # fmt: skip
    assert run.returncode == 0, run.stderr
    return home


def _chromium() -> str:
    require("chromium")
    return shutil.which("chromium")


@pytest.mark.slow
def test_study_page_in_a_real_browser_shows_trials_params_and_pictures(small_study, tmp_path):
    chromium = _chromium()
    dashboard = Dashboard(small_study)
    try:
        assert _listening_addresses(dashboard.port) == {"127.0.0.1"}  # not reachable from other machines
        page = f"{dashboard.url}/dashboard/studies/1/trials"
        dom = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
             "--dump-dom", page],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<style.*?</style>", " ", dom, flags=re.S)))
        assert "lr-sweep" in text and "3 Trials" in text
        for number in range(3):
            assert f"Trial {number}" in text
        for name in FOUR:
            assert re.search(rf"\b{name}\b", text), name
        assert "confusion matrix" in text and "per-class F1" in text and "macro_f1" in text
        pictures = re.findall(r'<img[^>]+src="(/artifacts/\d+/\d+/[0-9a-f-]+)"', dom)
        assert len(pictures) >= 2
        assert all(_get(dashboard.url + src).startswith(b"\x89PNG") for src in pictures)
    finally:
        dashboard.stop()


@pytest.mark.slow
def test_dashboard_reading_the_sqlite_file_never_disturbs_a_running_study(small_study, tmp_path):
    home = tmp_path / "live"
    shutil.copytree(small_study, home)
    dashboard = Dashboard(home)
    env = {**os.environ, "SEARCH_HOME": str(home)}
    run = launch("run", "--study", "lr-sweep", "--n-trials", "6", *TINY, "--set", "train.epochs=2", env=env)
    reads = 0
    try:
        deadline = time.monotonic() + 240
        while run.poll() is None and time.monotonic() < deadline:
            _get(f"{dashboard.url}/api/studies/1?after=0")
            reads += 1
            time.sleep(0.05)
        _, err = run.communicate(timeout=60)
    finally:
        dashboard.stop()
    assert run.returncode == 0, err[-2000:]
    assert "locked" not in err and reads > 10


@pytest.mark.slow
def test_a_dashboard_on_a_taken_port_says_so(one_trial_study, capsys, monkeypatch):
    import socket

    monkeypatch.setenv("SEARCH_HOME", str(one_trial_study))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", "--study", "lr-sweep", "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [  # only this: no address it is not serving on, no web server banner
        f"search: error: cannot serve the dashboard on 127.0.0.1:{port}: Address already in use; "
        "give another --port or --host"
    ]


@pytest.mark.slow
def test_a_tab_whose_request_is_slow_does_not_hold_up_the_others(small_study):
    """One request at a time, a tab whose request is still arriving (or whose page loads every trial
    of a large study) held up every other tab until it was done: each request has a thread."""
    dashboard = Dashboard(small_study)
    try:
        with socket.create_connection(("127.0.0.1", dashboard.port)) as slow:
            slow.sendall(b"GET /api/studies/1?after=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the rest not sent yet
            time.sleep(0.5)  # the server is reading it
            began = time.monotonic()
            answer = _get(f"{dashboard.url}/api/studies/1?after=3")  # another tab's poll, answered meanwhile
            assert time.monotonic() - began < 5 and b'"trials"' in answer
            slow.sendall(b"\r\n")
            assert slow.recv(64).startswith(b"HTTP/1.0 200")
    finally:
        dashboard.stop()
