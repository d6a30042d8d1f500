"""The throughput benchmark's CPU mode runs end to end (its GPU mode is the same code at other sizes)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.machine import require

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
def test_trial_throughput_runs_on_the_cpu_and_prints_every_figure(mps_control):
    # --packed-early: (d)'s processes set up while (a) runs, as on CUDA; --mps: (d) again under the
    # daemon `search run --mps` starts (here the stand-in for nvidia-cuda-mps-control)
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "trial_throughput.py"), "--packed-early", "--mps"],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    for label in ("(a) compute ceiling", "(b) JPEG + albumentations", "(c) a trial's epoch", "(d) 2 trials packed"):
        rate = re.search(re.escape(label) + r".*?\s(\d+) img/s", out)
        assert rate and int(rate.group(1)) > 0, label
    assert re.search(r"short study: 2 trials x 2 epochs, wall after decode\s+[\d.]+ s \(2 complete", out)
    assert re.search(r"start-up of a trial in a running worker \(data in memory\)\s+[\d.]+ s", out)
    assert re.search(r"\(a\) its first 3 steps in this process.*\s[\d.]+ s", out)
    assert re.search(r"\(\(c\): \d+ s\)", out)  # each part's own seconds
    for ratio in ("(c)/(a)", "(c)/(b)", "(d)/(c)"):
        assert re.search(re.escape(ratio) + r" = \d+\.\d\d", out), ratio
    assert "device: CPU" in out
    assert out.index("(a) compute ceiling") < out.index("((d) processes set up:") < out.index("(d) 2 trials packed")
    assert "(a) shared this CPU with (d)'s start-up (--packed-early): ratios to (a) say nothing here" in out
    assert re.search(r"\(d\) 2 trials packed on the device\s+\d+ img/s together \(\d+, \d+\)", out)
    assert re.search(r"warm decode cache on disk \(2 at once, during \(a\)\)\s+[\d.]+ s", out)
    assert re.search(r"\(d\) 2 trials packed, under CUDA MPS\s+\d+ img/s together \(\d+, \d+\)", out)
    assert re.search(r"\(d\)/\(c\) = \d+\.\d\d   under CUDA MPS", out)
    record = mps_control.read_text().splitlines()
    assert record[0].startswith("start ") and record[-1].startswith("quit ")  # and told to quit after


def test_packed_trials_count_only_the_window_where_all_of_them_train():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from trial_throughput import common_window_rate
    finally:
        sys.path.remove(str(BENCHMARKS))
    # One run trains from 0 to 20 s, the other from 5 to 25 s: together only from 5 to 20 s, where
    # the first did half its first epoch and all its second (150 images), the second 50 + 25.
    first, second = [(0.0, 10.0, 100), (10.0, 20.0, 100)], [(5.0, 15.0, 50), (15.0, 25.0, 50)]
    assert common_window_rate([first, second]) == pytest.approx(225 / 15)
    with pytest.raises(RuntimeError, match="never ran at the same time"):
        common_window_rate([[(0.0, 1.0, 10)], [(2.0, 3.0, 10)]])


@pytest.mark.slow
def test_trial_throughput_runs_only_the_parts_asked_for():
    script = str(BENCHMARKS / "trial_throughput.py")
    run = subprocess.run(
        [sys.executable, script, "--only", "c", "--cudnn-limit", "2", "--staged", "--cuda-graphs"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cuDNN autotuning times up to 2 algorithms per convolution" in run.stdout
    assert re.search(r"\(c\) a trial's epoch through training/\s+\d+ img/s", run.stdout)
    assert "decode of all JPEGs" in run.stdout  # (c) needs the decoded data
    assert re.search(r"\(c\) with the images in host memory .*\s+not run: CUDA only", run.stdout)
    assert re.search(r"\(c\) with train.cuda_graphs .*\s+not run: CUDA only", run.stdout)
    for other in ("(a) compute ceiling", "(b) JPEG", "(d) 2 trials", "short study", "(c)/(a)"):
        assert other not in run.stdout, other

    wrong = subprocess.run([sys.executable, script, "--only", "c,e"], capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2
    assert "unknown part e; choose from a,b,c,d,study" in wrong.stderr.strip().splitlines()[-1]
    negative = subprocess.run([sys.executable, script, "--cudnn-limit", "-1"], capture_output=True, text=True)
    assert negative.returncode == 2
    assert "--cudnn-limit: -1 is negative" in negative.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_packed_process_left_waiting_exits_without_training_when_the_benchmark_goes(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from trial_throughput import Packed
    finally:
        sys.path.remove(str(BENCHMARKS))
    from training import TrainConfig

    config = tmp_path / "config.json"
    config.write_text(TrainConfig(model={"name": "resnet10t", "pretrained": False}).model_dump_json())
    trials = Packed(config, 1, epochs=1)
    trials.ready()
    [proc] = trials.procs
    proc.stdin.close()  # what the benchmark's end (or crash) does to a process it never started
    assert proc.wait(timeout=60) == 0
    assert proc.stdout.read() == ""  # no report: it trained nothing


@pytest.mark.slow
def test_decode_cache_benchmark_compares_the_two_formats_across_processes():
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "decode_cache.py"), "--images", "1500", "--size", "64", "64",
         "--processes", "2", "--batch", "100"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    row = r"\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)"  # open s, first pass s, own MiB, PSS MiB
    rows = {kind: re.search(kind + row, run.stdout) for kind in ("copied", "mapped")}
    assert all(rows.values()), run.stdout
    own = {kind: int(row.group(3)) for kind, row in rows.items()}
    assert own["copied"] >= 15 and own["mapped"] < own["copied"] / 4  # 17.6 MiB of images, mapped from the file
    for ratio in ("open + first pass, mapped / copied", "memory of all 2 processes (PSS), mapped / copied"):
        assert re.search(re.escape(ratio) + r": \d+\.\d{3}", run.stdout), ratio
    gathered = re.search(r"training batches of 100 gathered from the mapped cache.*: (\d+) img/s", run.stdout)
    assert gathered and int(gathered.group(1)) > 0


@pytest.mark.slow
def test_selection_benchmark_prints_every_arms_figures(tmp_path):
    """The smallest run of it: one seed, two default trials and one cross-validated one."""
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "selection.py"), "--settings", "digits", "--seeds", "0", "--trials", "2", "1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    moves = re.search(r"one test image of the rarest class moves test macro-F1 by (0\.\d{4})", out)
    assert moves and float(moves[1]) < 0.005
    assert re.search(r"reference: \{.*\"lr\".*\}, retrained on the search part: test macro-F1 0\.\d{3}", out)
    number = r"-?\d\.\d{3} ± \d\.\d{3}"
    for arm in ("default", "default \\+ confirm", "cv", "cv \\+ ensemble"):
        assert re.search(rf"\| {arm} \| {number} \| [+-]\d\.\d{{3}} \| {number} \| ({number}|-) \| \d+ \|", out), arm
    assert re.search(r"  default: test \(reported\) by seed 0: 0\.\d{3} \(0\.\d{3}\)", out)
    # fold_pruning.py replays its rule's settings on the cross-validated study kept there
    replay = subprocess.run(
        [sys.executable, str(BENCHMARKS / "fold_pruning.py"), "--from", str(tmp_path), "--settings", "digits",
         "--seeds", "0"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr[-3000:]
    stopped = r"replaying the rule the studies ran stops the \d+ trials they stopped between folds: yes"
    assert re.search(stopped, replay.stdout), replay.stdout
    for setting in ("p < 0.1 \\(WilcoxonPruner's", "off", "p < 0.2", "p < 0.3"):
        assert re.search(rf"\| {setting}.* \| \d+ \| \d+ \| [01] of 1 \| 0\.\d{{3}} ± ", replay.stdout), setting


@pytest.mark.slow
def test_dashboard_load_benchmark_prints_every_servers_figures():
    """The smallest run of it: 200 trials, two tabs, the server as before and as shipped."""
    require("postgresql")
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "dashboard_load.py"), "--trials", "200", "--tabs", "2", "--arms",
         "one at a time, pool 3 (as before)", "search dashboard"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"study dashboard-\w+: 200 trials made in \d+ s", run.stdout), run.stdout
    for arm in (r"one at a time, pool 3 \(as before\)", "search dashboard"):
        assert re.search(rf"\| {arm} \| 2 \| \d+\.\d\d \| \d+\.\d\d \| \d\.\d{{3}} \| \d\.\d{{3}} \|", run.stdout), arm


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_storage_scale_stopped_with_sigterm_leaves_no_worker_and_no_folder(postgres_url):
    tmp_path = Path(tempfile.mkdtemp(prefix="scale-sigterm-"))  # not under pytest's: PgBouncer's user reads in it
    tmp_path.chmod(0o1777)
    try:
        _stopped_with_sigterm(tmp_path, postgres_url)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _stopped_with_sigterm(tmp_path: Path, postgres_url: str) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "SEARCH_TEST_POSTGRES": postgres_url}
    command = [sys.executable, str(BENCHMARKS / "storage_scale.py"), "--parts", "held", "--paths", "direct",
               "--steps", "10", "--processes", "2", "--epoch-seconds", "30"]  # fmt: skip
    bench = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, children = time.monotonic() + 120, []
    while time.monotonic() < deadline and len(children) < 3:  # the two worker processes and the resource tracker
        assert bench.poll() is None, bench.communicate()[1][-2000:]
        children = _children(bench.pid)
        time.sleep(0.2)
    time.sleep(3)  # the workers on their trials, holding connections
    children = _children(bench.pid)
    bench.send_signal(signal.SIGTERM)
    bench.communicate(timeout=120)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_running(pid) for pid in children):
        time.sleep(0.2)
    assert not [pid for pid in children if _running(pid)]
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(("scale-artifacts-", "pgbouncer-"))]
    assert not left  # its artifact folder, and PgBouncer's, removed


@pytest.mark.slow
def test_storage_scale_sizes_runs_the_worker_loop_without_an_error(postgres_url):
    """The virtual workers run the real worker loop: a change to its classes (the budget's gate, the
    progress line) that the stand-ins no longer fit shows here as errors, not as a table of nan."""
    env = {**os.environ, "SEARCH_TEST_POSTGRES": postgres_url}
    command = [sys.executable, str(BENCHMARKS / "storage_scale.py"), "--parts", "sizes", "--paths", "direct",
               "--sizes", "12", "--per-size", "4", "--size-workers", "2", "--processes", "2",
               "--epoch-seconds", "0.2"]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    row = re.search(r"^direct\s+12\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+\s+.*%\s+(\d+)\s+(\w+)$", run.stdout, re.MULTILINE)
    assert row, run.stdout[-2000:]
    median, p99, first, errors, exact = row.groups()
    assert errors == "0" and exact == "yes"
    assert 0 < float(median) <= float(p99) and 0 < float(first) <= float(p99)
    assert "a joining worker's first trial" in run.stdout
