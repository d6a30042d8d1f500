"""How the dashboard answers several browser tabs at once on a 10,000-trial study: on a PostgreSQL
server of its own, each tab loading the study's page and then polling it, as optuna-dashboard's page
does. Served as ``search dashboard`` served it before (one request at a time, the worker's pool of 3
connections), with a thread per request on pools of several sizes, and by ``search dashboard`` itself.

The study is filled by ``storage_scale.py``'s filler: finished trials of the mask study's space, with
10 reported epochs and each trial's records (18 x 18 confusion matrices, per-class F1), as real
trials leave them. Each arm's server is started afresh for each number of tabs, so that every
measurement starts from the dashboard's cold cache of the study's trials.

A tab's page load: ``/api/meta``, the study with every trial (``/api/studies/ID?after=0``) and the
parameter importances; then five polls for trials after the last (``?after=N``), a second apart.
Tabs open half a second apart, so that one tab's polls meet the next tab's page load. Printed per
arm and number of tabs: the page load's median and slowest, and the polls' median and slowest, in
seconds.

    python benchmarks/dashboard_load.py [--trials 10000] [--tabs 1,4,8] [--arms ...]
        [--storage URL --study NAME]

``--storage`` and ``--study`` measure a study that exists already (one the filler made before, on a
server that runs), in place of a new server and a newly filled study.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from postgres_here import postgres_here  # noqa: E402
from stopping import stop_everything_on_sigterm  # noqa: E402

# (name, a thread per request, the storage's pool); "search dashboard": the command as shipped
ARMS = {
    "one at a time, pool 3 (as before)": (False, 3),
    "threads, pool 3": (True, 3),
    "threads, pool 8": (True, 8),
    "threads, pool 16": (True, 16),
    "search dashboard": None,
}
POLLS, POLL_PAUSE, STAGGER = 5, 1.0, 0.5


def serve(url: str, study: str, port: int, threads: bool, pool: int) -> None:
    """One arm's server, in this process until it is killed."""
    from wsgiref.simple_server import WSGIServer, make_server

    import optuna_dashboard

    from search.commands.dashboard import serving
    from search.store import open_storage

    app = optuna_dashboard.wsgi(open_storage(url, pool=pool))
    server = serving("127.0.0.1", port, app) if threads else make_server("127.0.0.1", port, app, WSGIServer)
    print("ready", flush=True)
    server.serve_forever()


def start(arm: str, url: str, study: str) -> tuple[subprocess.Popen, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if ARMS[arm] is None:
        command = [sys.executable, "-m", "search", "dashboard", "--study", study, "--storage", url, "--port", str(port)]
    else:
        threads, pool = ARMS[arm]
        command = [sys.executable, __file__, "--serve", url, study, str(port), str(int(threads)), str(pool)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # up once it answers
        try:
            get(port, "/api/meta")
            return server, port
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"{arm}: the dashboard did not answer within 120 s")


def get(port: int, path: str) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"GET {path}: {answer.status} {body[:200]!r}")
        return body
    finally:
        connection.close()


def tab(port: int, study_id: int, trials: int, loads: list[float], polls: list[float], opens: float) -> None:
    time.sleep(max(0.0, opens - time.monotonic()))
    began = time.perf_counter()
    get(port, "/api/meta")
    detail = json.loads(get(port, f"/api/studies/{study_id}?after=0"))
    get(port, f"/api/studies/{study_id}/param_importances")
    loads.append(time.perf_counter() - began)
    assert len(detail["trials"]) == trials, len(detail["trials"])
    for _ in range(POLLS):
        time.sleep(POLL_PAUSE)
        began = time.perf_counter()
        get(port, f"/api/studies/{study_id}?after={trials}")
        polls.append(time.perf_counter() - began)


def measure(arm: str, url: str, study: str, study_id: int, trials: int, tabs: int) -> dict[str, float]:
    server, port = start(arm, url, study)
    try:
        loads, polls, first = [], [], time.monotonic() + 0.5
        threads = [threading.Thread(target=tab, args=(port, study_id, trials, loads, polls, first + k * STAGGER))
                   for k in range(tabs)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if len(loads) != tabs:
            raise RuntimeError(f"{arm}: {tabs - len(loads)} of {tabs} tabs failed")
        return {"load median": statistics.median(loads), "load max": max(loads),
                "poll median": statistics.median(polls), "poll max": max(polls)}  # fmt: skip
    finally:
        server.kill()
        server.wait()


def filled(url: str, trials: int) -> tuple[str, int, int]:
    """A study of ``trials`` finished trials (storage_scale.py's filler; the study file's queued
    trials too): its name, its id and how many trials it holds."""
    import optuna
    from storage_scale import _fill, _new_study

    name = f"dashboard-{uuid.uuid4().hex[:6]}"
    _new_study(url, name)
    began = time.monotonic()
    _fill(url, name, trials, processes=2)
    print(f"study {name}: {trials} trials made in {time.monotonic() - began:.0f} s", flush=True)
    study = optuna.load_study(study_name=name, storage=url)
    return name, study._study_id, len(study.get_trials(deepcopy=False))


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        url, study, port, threads, pool = sys.argv[2:7]
        serve(url, study, int(port), threads == "1", int(pool))
        return
    stop_everything_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--tabs", default="1,4,8", help="browser tabs at once, comma-separated")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--storage", help="an existing study's storage URL (with --study)")
    parser.add_argument("--study", help="an existing study's name (with --storage)")
    args = parser.parse_args()
    tabs = [int(n) for n in args.tabs.split(",")]
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("MASK_DATA", "unread")  # the mask study file names it; nothing is read
    if args.storage and args.study:
        import optuna

        study = optuna.load_study(study_name=args.study, storage=args.storage)
        table(args.storage, args.study, study._study_id, len(study.get_trials(deepcopy=False)), tabs, args.arms)
        return
    with postgres_here(durable=False) as server:
        name, study_id, held = filled(server.url, args.trials)
        table(server.url, name, study_id, held, tabs, args.arms)


def table(url: str, name: str, study_id: int, held: int, tabs: list[int], arms: list[str]) -> None:
    print(f"\n{held} trials; a page load: meta, the study with every trial, the importances; then "
          f"{POLLS} polls, {POLL_PAUSE:.0f} s apart; tabs open {STAGGER} s apart (seconds)\n")  # fmt: skip
    print("| server | tabs | page load, median | page load, slowest | poll, median | poll, slowest |")
    print("| --- | --- | --- | --- | --- | --- |")
    for count in tabs:  # the arms side by side for each number of tabs: they share the machine's load
        for arm in arms:
            found = measure(arm, url, name, study_id, held, count)
            print(f"| {arm} | {count} | {found['load median']:.2f} | {found['load max']:.2f} | "
                  f"{found['poll median']:.3f} | {found['poll max']:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
