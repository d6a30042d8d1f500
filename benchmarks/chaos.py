"""Faults at random moments: real workers on one PostgreSQL study, SIGKILLed at random moments and
the server restarted under them; then every invariant a study must keep, checked and printed.

Four ``search run`` workers (demo data, short trials, heartbeats every second) share one study on
a PostgreSQL server of this run's own (``postgres_here.py``: the installed server, a new cluster),
so that restarting it touches nothing else. A seeded schedule SIGKILLs a worker at least
``--kills`` times, each killed worker started again at once. Most kills wait for a named moment:
the workers run with ``$SEARCH_PAUSE_POINTS`` set (``training.pause_points``), so each writes a line
and pauses briefly at the moments the issue names, and the kill lands inside:

- ``upload``: a checkpoint's bytes are in the artifact folder, under a temporary name;
- ``tell``: the trial trained and recorded its result and checkpoint, and is not told yet;
- ``budget``: the worker holds the study's budget lock and is about to ask for its trial;
- ``decode``: the worker holds the machine's decode lock (the images' cache).

The rest kill a random worker at a random time. The server is restarted ``--restarts`` times in
between: as a crash does (every process ended at once), then as an operator does (sessions ended
cleanly). The seed is printed first; ``--seed`` replays a schedule (the moments replay, the exact
instants cannot). After the study ends, each invariant is checked and printed as one row; the run
exits 1 if any fails.

    python benchmarks/chaos.py [--seed N] [--kills 10] [--restarts 2] [--workers 4] [--n-trials 40]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from postgres_here import PostgresHere, postgres_here  # noqa: E402
from stopping import stop_everything_on_sigterm  # noqa: E402

MOMENTS = ("upload", "tell", "budget", "decode")
STUDY = "chaos"
KEEP = 3  # checkpoints.keep_top_k
TRIAL = [
    "--set", "model.name=test_resnet", "--set", "data.image_size=16", "--set", "train.epochs=2",
    "--set", "train.batch_size=32", "--set", f"checkpoints.keep_top_k={KEEP}",
    "--heartbeat-interval", "1", "--grace-period", "3", "--quiet",
]  # fmt: skip
PAUSE_SECONDS = 1.0


@dataclass
class Chaos:
    """The run's workers, its server and what happened to them."""

    server: PostgresHere
    home: Path
    n_trials: int
    workers: dict[int, subprocess.Popen] = field(default_factory=dict)  # slot: its current process
    started: int = 0
    processes: list[subprocess.Popen] = field(default_factory=list)  # every worker started
    killed: set[int] = field(default_factory=set)  # the pids this run killed
    events: list[tuple[str, str]] = field(default_factory=list)  # (what, how it went)

    @property
    def points(self) -> Path:
        return self.home / "pause-points.log"

    def start(self, slot: int) -> None:
        command = [sys.executable, "-m", "search", "run", "--study", "lr-sweep", "--set", f"name={STUDY}",
                   "--storage", self.server.url, "--n-trials", str(self.n_trials), *TRIAL,
                   "--set", f"data.cache_dir={self.home / 'cache'}"]  # fmt: skip
        env = {**os.environ, "SEARCH_HOME": str(self.home), "SEARCH_PAUSE_POINTS": str(self.points),
               "SEARCH_PAUSE_SECONDS": str(PAUSE_SECONDS)}  # fmt: skip
        log = open(self.home / f"worker-{self.started}.log", "w")  # noqa: SIM115 - the child's
        self.workers[slot] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(self.workers[slot])
        self.started += 1

    def alive(self) -> dict[int, subprocess.Popen]:
        return {slot: p for slot, p in self.workers.items() if p.poll() is None}

    def kill(self, slot: int) -> None:
        """SIGKILL of the slot's worker, and a new worker in its place."""
        self.workers[slot].send_signal(signal.SIGKILL)
        self.workers[slot].wait()
        self.killed.add(self.workers[slot].pid)
        self.start(slot)

    def kill_at(self, moment: str, limit: float = 90) -> str:
        """The next worker to reach ``moment`` killed while it is paused there."""
        seen = self.points.stat().st_size if self.points.exists() else 0
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not self.alive():
                return "not reached: the study ended"
            lines = []
            with contextlib.suppress(FileNotFoundError), open(self.points) as log:
                log.seek(seen)
                lines = [line for line in log.readlines() if line.endswith("\n")]  # whole lines only
            for line in lines:
                pid, name, at = line.split()
                slot = next((s for s, p in self.alive().items() if p.pid == int(pid)), None)
                if name == moment and slot is not None:
                    self.kill(slot)
                    inside = time.time() < float(at) + PAUSE_SECONDS
                    return f"worker {pid} killed {'inside' if inside else 'just after'} its pause"
            seen += sum(len(line) for line in lines)
            time.sleep(0.02)
        return f"not reached within {limit:.0f} s"


def schedule(rng: random.Random, kills: int, restarts: int) -> list[str]:
    """Each moment twice where ``kills`` allows, the rest at random times; restarts in between."""
    events = [*MOMENTS * 2][: max(kills, 0)]
    events += ["anywhere"] * (kills - len(events))
    rng.shuffle(events)
    for _ in range(restarts):
        events.insert(rng.randint(1, len(events)), "restart")
    return events


def run(chaos: Chaos, events: list[str], rng: random.Random, workers: int, limit: float) -> None:
    for slot in range(workers):
        chaos.start(slot)
    restarts = 0
    for event in events:
        time.sleep(rng.uniform(0.5, 3.0))
        if event == "restart":
            mode = "immediate" if restarts % 2 == 0 else "fast"
            chaos.server.restart(mode)
            restarts += 1
            chaos.events.append((f"restart ({mode})", "server back"))
        elif event == "anywhere":
            alive = sorted(chaos.alive())
            if not alive:
                chaos.events.append(("kill anywhere", "not reached: the study ended"))
                continue
            slot = rng.choice(alive)
            pid = chaos.workers[slot].pid
            chaos.kill(slot)
            chaos.events.append(("kill anywhere", f"worker {pid} killed"))
        else:
            chaos.events.append((f"kill at {event}", chaos.kill_at(event)))
    deadline = time.monotonic() + limit
    while chaos.alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    for process in chaos.alive().values():
        process.kill()
        chaos.events.append(("worker still running at the limit", f"killed {process.pid}"))


def main(argv: list[str] | None = None) -> int:
    stop_everything_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--n-trials", type=int, default=40)
    parser.add_argument("--limit", type=float, default=600, help="seconds the study may take after the schedule")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    print(f"chaos: seed {seed} (replay: python benchmarks/chaos.py --seed {seed})", flush=True)
    rng = random.Random(seed)
    events = schedule(rng, args.kills, args.restarts)
    print(f"chaos: {args.workers} workers, {args.n_trials} trials, schedule: {', '.join(events)}", flush=True)
    home = Path(tempfile.mkdtemp(prefix="chaos-"))
    started = time.monotonic()
    try:
        with postgres_here() as server:
            chaos = Chaos(server, home, args.n_trials)
            run(chaos, events, rng, args.workers, args.limit)
            for what, how in chaos.events:
                print(f"  {what:<24} {how}", flush=True)
            print(f"chaos: the study ended {time.monotonic() - started:.0f} s after the first worker started; "
                  f"{chaos.started} workers started in all", flush=True)  # fmt: skip
            rows = [*check(server, home, args.n_trials), exits(chaos)]
    except BaseException:
        print(f"chaos: the workers' logs are kept in {home}")
        raise
    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'invariant':<{width}}  {'holds':<5}  detail")
    for name, holds, detail in rows:
        print(f"{name:<{width}}  {'yes' if holds else 'NO':<5}  {detail}")
    failed = [name for name, holds, _ in rows if not holds]
    if failed:
        print(f"chaos: the workers' logs are kept in {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)
    print(f"\nchaos: seed {seed}: {'every invariant holds' if not failed else f'{len(failed)} invariants broken'}")
    return 1 if failed else 0


def check(server: PostgresHere, home: Path, n_trials: int) -> list[tuple[str, bool, str]]:
    """Every invariant: (what, whether it holds, what was found)."""
    import optuna
    from optuna.trial import TrialState

    from search.ranking import ranked
    from search.record import TrialRecord, failures_by_reason
    from search.store.artifacts import DASHBOARD_ARTIFACTS
    from training.checkpoint import load_checkpoint

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=STUDY, storage=server.url)
    trials = study.get_trials()
    counts = Counter(t.state.name for t in trials)
    finished = counts["COMPLETE"] + counts["PRUNED"]
    rows = [
        ("finished trials (complete + pruned) = n_trials", finished == n_trials, f"{finished} of {n_trials}"),
        ("no trial RUNNING", counts["RUNNING"] == 0, f"{counts['RUNNING']} running"),
        ("no WAITING trial beyond the budget", counts["WAITING"] <= max(0, n_trials - finished - counts["RUNNING"]),
         f"{counts['WAITING']} waiting"),
    ]  # fmt: skip

    artifacts = home / "artifacts"
    records: dict[str, tuple[int | None, str]] = {}  # artifact id: (trial number, file name)
    storage = optuna.storages.get_storage(server.url)
    for t in trials:
        for meta in optuna.artifacts.get_all_artifact_meta(t, storage=storage):
            records[meta.artifact_id] = (t.number, meta.filename)
    for key in storage.get_study_system_attrs(storage.get_study_id_from_name(STUDY)):
        if key.startswith(DASHBOARD_ARTIFACTS):
            records[key.rsplit(":", 1)[1]] = (None, "a note's picture")
    files = {f.name for f in artifacts.iterdir()} if artifacts.is_dir() else set()
    keep = KEEP
    kept = {t.number for t in ranked(trials)[:keep]}
    checkpoints = {a for a, (n, name) in records.items() if a in files and name.endswith(".safetensors")}
    unloadable, outside = [], []
    for artifact_id in sorted(checkpoints):
        try:
            load_checkpoint(artifacts / artifact_id)
        except Exception as error:  # any reason a checkpoint does not load
            unloadable.append(f"{artifact_id[:8]} ({type(error).__name__})")
        if records[artifact_id][0] not in kept:
            outside.append(f"trial {records[artifact_id][0]}")
    rows.append(("every stored checkpoint loads", not unloadable, f"{len(checkpoints)} loaded" + (
        f"; not: {', '.join(unloadable)}" if unloadable else "")))  # fmt: skip
    rows.append(
        (
            f"every stored checkpoint is of a top-{keep} trial",
            not outside,
            f"top {keep}: trials {sorted(kept)}" + (f"; also stored: {', '.join(outside)}" if outside else ""),
        )
    )
    temporary = sorted(name for name in files if name.startswith("."))
    unrecorded = sorted(name for name in files if not name.startswith(".") and name not in records)
    rows.append(
        (
            "no artifact file without its record",
            not unrecorded,
            f"{len(files) - len(temporary)} files" + (f"; unrecorded: {unrecorded[:3]}" if unrecorded else ""),
        )
    )
    missing = [t.number for t in ranked(trials)[:keep] if TrialRecord.of(t).checkpoint_artifact not in files]
    rows.append(
        (
            "no kept trial's record without its file",
            not missing,
            f"{len(kept)} kept" + (f"; missing: trials {missing}" if missing else ""),
        )
    )
    rows.append(
        ("no temporary file", not temporary, f"{len(temporary)} left" + (f": {temporary[:3]}" if temporary else ""))
    )
    work = home / "work"
    rows.append(
        (
            "no work folder",
            not work.exists(),
            "none left" if not work.exists() else f"left: {sorted(work.rglob('*'))[:3]}",
        )
    )
    rows.append(held_locks(server, home))

    failed = [t for t in trials if t.state == TrialState.FAIL]
    print("\nfailed trials, by reason (as search status shows them):")
    for reason, numbers in failures_by_reason(trials):
        print(f"  {len(numbers)} x {reason} (trial {', '.join(map(str, numbers))})")
    unexplained = [t.number for t in failed if not TrialRecord.of(t).failure_reason]
    rows.append(
        (
            "every FAIL trial has a reason",
            not unexplained,
            f"{len(failed)} failed" + (f"; no reason: trials {unexplained}" if unexplained else ""),
        )
    )
    retried = {
        n
        for t in trials
        for n in t.system_attrs.get("retry_history", [])
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL)
    }
    not_again = [t.number for t in failed if t.number not in retried]
    rows.append(
        (
            "every FAIL trial's params were tried again",
            not not_again,
            f"{len(failed) - len(not_again)} tried again" + (f"; not: trials {not_again}" if not_again else ""),
        )
    )
    rows.append(views_agree(server, home, counts))
    return rows


def exits(chaos: Chaos) -> tuple[str, bool, str]:
    """Every worker that was not killed ended by itself, with exit status 0 (the study done)."""
    bad = [(p, p.returncode) for p in chaos.processes if p.pid not in chaos.killed and p.returncode != 0]
    detail = f"{len(chaos.processes) - len(chaos.killed)} ended by themselves"
    for process, code in bad[:2]:
        log = chaos.home / f"worker-{chaos.processes.index(process)}.log"
        last = (log.read_text().strip().splitlines() or [""])[-1]
        detail += f"; worker {process.pid} exited {code}: {last[:160]}"
    return ("every worker not killed exited 0", not bad, detail)


def held_locks(server: PostgresHere, home: Path) -> tuple[str, bool, str]:
    """No lock still held: the server's advisory locks (the budget's), and the decode lock files."""
    import fcntl

    import psycopg2

    with contextlib.closing(psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres",
                                             dbname="postgres")) as db, db.cursor() as cursor:  # fmt: skip
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        advisory = cursor.fetchone()[0]
    held = []
    for path in (home / "cache").rglob("*.lock"):
        with open(path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(path.name)
    return ("no lock held", not advisory and not held, f"{advisory} advisory locks, {len(held)} decode locks held")


def views_agree(server: PostgresHere, home: Path, counts: Counter) -> tuple[str, bool, str]:
    """``search status``, Optuna's own CLI and the dashboard count the study's trials alike."""
    env = {**os.environ, "SEARCH_HOME": str(home)}
    status = subprocess.run([sys.executable, "-m", "search", "status", "--study", STUDY, "--storage", server.url],
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    line = next((line for line in status.stdout.splitlines() if re.match(r"^  (complete|pruned|fail) \d", line)), "")
    by_status = Counter({name.upper(): int(n) for name, n in re.findall(r"(\w+) (\d+)", line)})
    optuna_cli = str(Path(sys.executable).parent / "optuna")
    cli = subprocess.run([optuna_cli, "trials", "--study-name", STUDY, "--storage", server.url, "-f", "json"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    by_cli = Counter(t["state"] for t in json.loads(cli.stdout or "[]"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dashboard = subprocess.Popen([sys.executable, "-m", "search", "dashboard", "--study", STUDY, "--storage",
                                  server.url, "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
    by_dashboard: Counter = Counter()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not by_dashboard:
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    study_id = next(
                        s["study_id"] for s in json.load(answer)["study_summaries"] if s["study_name"] == STUDY
                    )
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/studies/{study_id}?after=0", timeout=5
                ) as answer:
                    by_dashboard = Counter(t["state"].upper() for t in json.load(answer)["trials"])
            time.sleep(0.2)
    finally:
        dashboard.terminate()
        dashboard.wait(10)
    wanted = +counts
    views = {"search status": +by_status, "optuna trials": +by_cli, "dashboard": +by_dashboard}
    agree = all(view == wanted for view in views.values())
    shown = ", ".join(f"{k.lower()} {v}" for k, v in sorted(wanted.items()))
    detail = shown if agree else "; ".join(f"{name}: {dict(view)}" for name, view in views.items())
    return ("status, optuna's CLI and the dashboard agree", agree, detail)


if __name__ == "__main__":
    sys.exit(main())
