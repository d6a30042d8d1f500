"""The throughput benchmark's CPU mode runs end to end (its GPU mode is the same code at other sizes)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_trial_throughput_runs_on_the_cpu_and_prints_every_figure():
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "trial_throughput.py")], capture_output=True, text=True, timeout=400
    )
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
