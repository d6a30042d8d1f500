"""The chaos benchmark, shorter: real workers on a PostgreSQL server of its own, SIGKILLed at a
checkpoint upload, a tell and the budget decision, the server restarted as a crash does; every
invariant of the study checked by the benchmark itself and each printed row read here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.machine import require

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
INVARIANTS = 14


@pytest.mark.slow
def test_a_short_chaos_run_keeps_every_invariant():
    require("postgresql")
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "chaos.py"), "--seed", "11", "--kills", "3", "--restarts", "1",
         "--workers", "3", "--n-trials", "10"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = run.stdout
    assert "chaos: seed 11 (replay: python benchmarks/chaos.py --seed 11)" in out
    landed = re.findall(r"kill at (upload|tell|budget)\s+worker \d+ killed inside its pause", out)
    assert sorted(landed) == ["budget", "tell", "upload"], out
    assert re.search(r"restart \(immediate\)\s+server back", out), out
    table = out[out.index("invariant ") :].splitlines()[1 : 1 + INVARIANTS]
    assert len(table) == INVARIANTS and all(re.search(r"  yes  ", row) for row in table), out[-4000:]
    assert "chaos: seed 11: every invariant holds" in out
    assert run.returncode == 0, run.stderr[-3000:]
