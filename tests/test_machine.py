"""What the suite does on a machine that lacks a program it needs (``tests/machine.py``): installs
it where the run is root, says in one line what to install elsewhere, and skips the tests that
need it, or fails them under CI."""

from __future__ import annotations

import os
import stat

import pytest

from tests import machine

MISSING = {"no-such-package": ("no-such-program",)}


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """An ``apt-get`` on PATH that records how it was called; returns the record."""
    record = tmp_path / "apt-calls"
    (tmp_path / "bin").mkdir()
    apt = tmp_path / "bin" / "apt-get"
    apt.write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    apt.chmod(apt.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(machine, "PACKAGES", {**machine.PACKAGES, **MISSING})
    return record


def test_as_root_the_missing_packages_are_installed_with_apt_get(fake_apt, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv("SEARCH_TESTS_INSTALL", raising=False)
    said: list[str] = []
    machine.install_missing(said.append)
    assert fake_apt.read_text().splitlines() == ["update -qq", "install -y -qq no-such-package"]
    assert said == [
        "tests: installing Debian's no-such-package for the tests that start them (apt-get install -y no-such-package)"
    ]


@pytest.mark.parametrize("user", ["not root", "root, told not to install"])
def test_without_root_one_line_says_what_to_install_and_nothing_is_run(fake_apt, monkeypatch, user):
    monkeypatch.setattr(os, "geteuid", lambda: 1000 if user == "not root" else 0)
    if user != "not root":
        monkeypatch.setenv("SEARCH_TESTS_INSTALL", "0")  # a machine without a package registry
    said: list[str] = []
    machine.install_missing(said.append)
    assert not fake_apt.exists()
    assert said == [
        "tests: Debian's no-such-package missing; run `sudo apt-get install -y no-such-package`: "
        "the tests that need them are skipped"
    ]


def test_a_test_needing_a_missing_package_is_skipped_saying_what_to_install_and_fails_under_ci(monkeypatch):
    monkeypatch.setattr(machine, "PACKAGES", {**machine.PACKAGES, **MISSING})
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs Debian's no-such-package: apt-get install -y no-such-pack"):
        machine.require("no-such-package")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="needs Debian's no-such-package"):
        machine.require("no-such-package")
    machine.require("postgresql")  # installed: nothing happens
