"""The `search` command: bad input is one line with its exit code, in every command; a reader that
goes away; an exit without Python's teardown."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from search.cli import main
from tests.conftest import search


@pytest.mark.slow
def test_unreachable_database_is_one_line_in_bounded_time(tmp_path):
    started = time.monotonic()
    run = search(
        "status", "--study", "x", "--storage", "postgresql+psycopg2://postgres:hunter2@127.0.0.1:1/test", check=False
    )
    assert time.monotonic() - started < 30
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1
    assert "cannot open storage" in run.stderr and "hunter2" not in run.stderr and "***" in run.stderr


def _bad_data(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "labels.csv").write_text("path,label\na.png,cat\n,dog\n")
    return {"empty": str(tmp_path / "empty"), "csv": str(tmp_path / "labels.csv")}


BAD_INPUTS = [
    # the data cases run as new studies: the one-trial study was made on other data, and says so first
    ("missing data root", ["run", "--study", "lr-sweep", "--set", "name=d1", "--set", "data.source=folder", "--set",
     "data.root=/nope"],
     1, "/nope does not exist"),
    ("empty data root", ["run", "--study", "lr-sweep", "--set", "name=d2", "--set", "data.source=folder", "--set",
     "data.root={empty}"],
     1, "has no class subfolders"),
    ("bad labels csv", ["run", "--study", "lr-sweep", "--set", "name=d3", "--set", "data.source=csv", "--set",
     "data.root={csv}"],
     1, "labels.csv:3: empty path or label"),
    ("malformed storage URL", ["status", "--study", "lr-sweep", "--storage", "not a url"], 2, "is malformed"),
    ("a PostgreSQL URL whose driver is not installed", ["status", "--study", "x", "--storage",
     "postgresql://u:s3cret@127.0.0.1:1/db"], 1, "the driver of postgresql:// is not installed; name psycopg2, which "
     "the postgres extra installs: postgresql+psycopg2://user@host:5432/db (pip install -e '.[postgres]')"),
    ("password never shown", ["status", "--study", "x", "--storage", "postgresql://u:s3cret@"], 1, "***"),
    # an unknown study is a usage error in every command that reads one, with the nearest name
    *[(f"unknown study, {command}", [command, "--study", "lr-swep", *more], 2,
       "no study 'lr-swep' in this storage; did you mean 'lr-sweep'? studies here: ['lr-sweep']")
      for command, more in [("status", []), ("best", []), ("report", ["--out", "r"]),
                            ("export", ["--out", "x.safetensors"]), ("dashboard", []), ("delete", ["--yes"]),
                            ("stop", []), ("ensemble", ["--out", "e"]), ("notebook", ["--out", "n.ipynb"]),
                            ("confirm", [])]],
    ("missing trial", ["export", "--study", "lr-sweep", "--trial", "99", "--out", "x.safetensors"], 1,
     "has no trial 99; trials are numbered 0.."),
    ("unknown option", ["run", "--study", "lr-sweep", "--n-trails", "3"], 2, "unrecognized arguments"),
    # numbers out of range are usage errors, not runs that quietly do nothing (or something else)
    ("negative trials", ["run", "--study", "lr-sweep", "--n-trials", "-3"], 2,
     "argument --n-trials: must be 1 or more, got -3; see search run --help"),
    ("no workers", ["run", "--study", "lr-sweep", "--workers", "0"], 2, "argument --workers: must be 1 or more, got 0"),
    ("no trials per GPU", ["run", "--study", "lr-sweep", "--trials-per-gpu", "0"], 2,
     "argument --trials-per-gpu: must be 1 or more, got 0"),
    ("negative timeout", ["run", "--study", "lr-sweep", "--timeout", "-1"], 2,
     "argument --timeout: must be more than 0 seconds, got -1"),
    ("words for a number", ["run", "--study", "lr-sweep", "--workers", "four"], 2,
     "argument --workers: expected a whole number, got 'four'"),
    ("port out of range", ["dashboard", "--study", "lr-sweep", "--port", "70000"], 2,
     "argument --port: must be from 0 to 65535, got 70000"),
    ("no configuration to confirm", ["confirm", "--study", "lr-sweep", "--top", "0"], 2,
     "argument --top: must be 1 or more, got 0"),
    ("no confirmation run", ["confirm", "--study", "lr-sweep", "--seeds", "0"], 2,
     "argument --seeds: must be 1 or more, got 0"),
    ("negative trial", ["export", "--study", "lr-sweep", "--trial", "-1", "--out", "x"], 2,
     "argument --trial: must be 0 or more, got -1"),
    # where an output cannot be written: one line naming it, nothing left behind (checked below)
    ("export onto a folder", ["export", "--study", "lr-sweep", "--out", "{empty}", "--force"], 1,
     "empty: Is a directory"),
    ("export under a file", ["export", "--study", "lr-sweep", "--out", "{csv}/best.safetensors"], 1,
     "could not write checkpoint"),
    ("artifacts under a file", ["run", "--study", "lr-sweep", "--artifacts", "{csv}/artifacts"], 1,
     "cannot make the artifact folder"),
    ("SQLite folder under a file", ["status", "--study", "x", "--storage", "sqlite:///{csv}/db/s.db"], 1,
     "cannot make the folder of the SQLite file"),
    ("images not a folder", ["predict", "--checkpoint", "x", "--images", "{csv}", "--out", "{empty}/p.csv"], 1,
     "labels.csv is a file, not a folder; give --images the folder"),
    ("a space the study's trials cannot take", ["run", "--study", "lr-sweep", "--set",
     "space.lr.log=false"], 2,
     "study 'lr-sweep' has trials that sampled 'lr' from floats 0.0003..0.03 (log scale)"),
    ("a device torch does not know", ["run", "--study", "lr-sweep", "--set", "train.device=tpu"], 2,
     "train.device = 'tpu' is not a device torch knows; use auto, cpu, cuda, cuda:N"),
    ("info.csv not there", ["predict", "--checkpoint", "x", "--images", "{empty}", "--info", "{empty}/info.csv",
     "--out", "{empty}/p.csv"], 1, "cannot read --info"),
    ("artifacts under a file, workers", ["run", "--study", "lr-sweep", "--workers", "2", "--artifacts",
     "{csv}/artifacts"], 1, "cannot make the artifact folder"),
    # the run decodes and splits before its workers start: one line, not one per worker
    ("data root missing, workers", ["run", "--study", "lr-sweep", "--workers", "2", "--set", "name=d4", "--set",
     "data.source=folder",
     "--set", "data.root=/nope"], 1, "/nope does not exist"),
    ("a split the data cannot give", ["run", "--study", "lr-sweep", "--workers", "2", "--quiet", "--set",
     "name=d5", "--set", "data.val_ratio=0.001"], 1,
     "data.val_ratio = 0.001 cuts the data into 1000 parts, it has only 675 images"),
    # a queued set's value of the wrong type, and a component renamed by --set: one line that says what to do
    ("a word where the space has a float", ["run", "--study", "lr-sweep", "--set",
     "enqueue=[{{lr: fast, accumulation_steps: 1, scheduler: cosine, loss: cross_entropy}}]"], 2,
     "with --set enqueue: enqueue[0]: lr='fast' is not a number; the space samples it from [0.0003, 0.03]"),
    ("a fraction where the space has a whole number", ["run", "--study", "lr-sweep", "--set",
     "enqueue=[{{lr: 0.001, accumulation_steps: 1, scheduler: step, step_size: 1.5, step_gamma: 0.5, "
     "loss: cross_entropy}}]"], 2, "step_size=1.5 is not a whole number; the space samples it from [1, 3]"),
    ("an endless whole number", ["run", "--study", "lr-sweep", "--set",
     "enqueue=[{{lr: 0.001, accumulation_steps: 1, scheduler: step, step_size: .inf, step_gamma: 0.5, "
     "loss: cross_entropy}}]"], 2, "step_size=inf is not a finite number; the space samples it from [1, 3]"),
    ("a pruner renamed by --set", ["run", "--study", "lr-sweep", "--set", "pruner.name=none"], 2,
     "pruner 'none': NopPruner() takes no arguments; --set pruner.name keeps the file's other pruner options: "
     "replace the whole section, e.g. --set 'pruner={name: none}'"),
    ("more folds than the data can give", ["run", "--study", "lr-sweep", "--quiet", "--set", "name=d6", "--set",
     "data.folds=1000"], 1, "data.folds = 1000, but the data has only 675 images: give at most 675 folds"),
    ("fold models of a trial not cross-validated", ["export", "--study", "lr-sweep", "--folds", "--out",
     "{empty}/folds"], 1, "trial 0 is not cross-validated (data.folds); export it without --folds"),
    ("an ensemble of a study not cross-validated", ["ensemble", "--study", "lr-sweep", "--out", "{empty}/e"], 1,
     "has no complete cross-validated trial with stored fold models"),
]  # fmt: skip


@pytest.mark.parametrize("case, argv, code, message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_with_its_exit_code(one_trial_study, tmp_path, capsys, monkeypatch, case, argv, code,
                                                  message):  # fmt: skip
    monkeypatch.setenv("SEARCH_HOME", str(one_trial_study))
    paths = _bad_data(tmp_path)
    argv = [a.format(**paths) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and "s3cret" not in err
    assert not [p.name for p in tmp_path.rglob(".*.tmp")]  # no temporary file of a failed write stays
    made = [a.removeprefix("name=") for a in argv if a.startswith("name=")]
    if argv[0] == "run" and made:  # a run that failed before its first trial leaves no empty study
        assert made[0] not in optuna.get_all_study_names(f"sqlite:///{one_trial_study}/studies.db")


def test_a_database_error_nothing_waited_for_is_one_line_not_a_traceback(capsys):
    import sqlalchemy

    from search.console import exit_code

    def gone():
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))

    assert exit_code(gone) == 1
    assert capsys.readouterr().err == (
        "search: error: the storage failed: server closed the connection unexpectedly; run again once it answers\n"
    )


@pytest.mark.slow
def test_a_reader_that_goes_away_ends_the_command_quietly(one_trial_study):
    """`search status | head -1`: the rest of the output has nowhere to go; no traceback about it."""
    env = {**os.environ, "SEARCH_HOME": str(one_trial_study)}
    command = [sys.executable, "-m", "search", "status", "--study", "lr-sweep"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # before it writes a line
    assert proc.wait(timeout=60) == 141 and proc.stderr.read() == b""


def test_the_command_exits_with_mains_code_after_its_output_without_pythons_teardown(monkeypatch, capsys):
    """Python's teardown of torch and the rest costs 1-2 s after a run's work is done: skipped."""
    from search.cli import entry

    class Exited(Exception):
        pass

    def exit_now(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(sys, "argv", ["search", "status", "--study", "nope"])
    monkeypatch.setattr(os, "_exit", exit_now)
    with pytest.raises(Exited) as exited:
        entry()
    assert exited.value.args == (2,)
    assert capsys.readouterr().err.startswith("search: error: no study 'nope' in this storage")


def test_search_alone_lists_the_commands_and_says_its_version(capsys):
    from search.commands import COMMANDS

    assert main([]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.split("commands:\n")[1].splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS)
    assert main(["--version"]) == 0 and re.fullmatch(r"search \d+\.\d+\.\d+\n", capsys.readouterr().out)


@pytest.mark.parametrize("command", ["run", "stop", "status", "best", "studies", "export", "report", "dashboard",
                                     "predict", "delete"])  # fmt: skip
def test_every_command_says_first_what_it_does_helps_every_option_and_ends_with_examples(command, capsys):
    from search.cli import build_parser
    from search.commands import COMMANDS

    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == COMMANDS[command].HELP
    examples = text.rstrip().split("examples:\n")[-1].splitlines()
    assert 1 <= len([line for line in examples if line.strip().startswith(f"search {command}")]) <= 2
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        assert action.help and action.help != argparse.SUPPRESS, f"{command} {action.option_strings}: no help"
