"""How many workers one study holds, and what the storage costs a trial as the study grows: on the
real PostgreSQL server, once directly and once through PgBouncer (transaction pooling, configured
from ``deploy/pgbouncer/pgbouncer.ini``).

Virtual workers run the project's real worker loop (``run_trials``: the budget and its lock, stale
trials failed and retried, stop requests), the mask study's sampler (TPE) and pruner, heartbeats,
records and checkpoint uploads; each has its own storage client (Optuna's RDBStorage with the
worker's pool), as a worker process has. Only training is replaced: a stand-in sleeps for each
epoch and reports a macro-F1 that depends on the learning rate, and writes a small checkpoint. So
the CPU goes to the storage path, not to models. Workers are threads, spread over a few processes.

1. Workers held: steps of N workers on a new study of 2 trials per worker; at each step the storage
   errors (a worker that could not open or use the storage, a database error it waited out, a
   failed trial), whether the budget came out exact (n_trials finished, none running, no surplus),
   the most PostgreSQL connections in use (``pg_stat_activity``), PgBouncer's clients, and the
   study's throughput, and the most trials running at once (so workers on the study at once).
   ``--start-rate`` starts the workers over time, as an array job's tasks start: a few cores cannot
   play a thousand clients' start-up in one instant, where each real worker has its own machine's.
   A path stops stepping up at its first step with errors.
2. Storage time per trial as the study grows: the study is filled with finished trials (made by
   the same sampler's space, with 10 reported epochs and a trial's records) to each size, then a
   few workers run trials on it. A trial's storage time is its whole cycle (the budget decision,
   ask, sampling, each report and pruning check, upload, records, tell, retention) less the
   stand-in's sleeps; ``ask`` alone is timed too.

    python benchmarks/storage_scale.py [--steps 10,25,50,100,250,500,1000] [--sizes 1000,5000,10000]
        [--start-rate 4]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import psycopg2
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pgbouncer_here import pgbouncer  # noqa: E402
from stopping import stop_everything_on_sigterm  # noqa: E402

SERVER = os.environ.get("SEARCH_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
EPOCHS = 10  # the mask study's
REAL_TRIAL_SECONDS = 600  # a mask trial on a GPU: about 10 minutes
WORKERS_PER_EPOCH_SECOND = 20  # at N workers the stand-in's epoch lasts N / 20 s (at least --epoch-seconds)
CLASSES = 18


@dataclass
class Job:
    """What one process of virtual workers is given."""

    url: str
    study: str
    n_trials: int
    indices: list[int]
    epoch_seconds: float
    artifacts: str
    overrides: list[str]
    grace_period: int = 30  # seconds without a heartbeat before a trial counts as lost (search run's default)
    start_over: float = 0.0  # worker i of N starts i / N of this many seconds after the first
    workers: int = 1


@dataclass
class Measured:
    """What the virtual workers of one process measured."""

    costs: list[float] = field(default_factory=list)  # storage seconds per trial
    firsts: list[float] = field(default_factory=list)  # storage seconds of each worker's first trial
    laters: list[float] = field(default_factory=list)  # and of its later trials
    asks: list[float] = field(default_factory=list)  # seconds per ask
    holds: list[float] = field(default_factory=list)  # seconds the study's lock was held per trial start
    errors: list[str] = field(default_factory=list)
    trials: int = 0

    def add(self, other: Measured) -> None:
        self.costs += other.costs
        self.firsts += other.firsts
        self.laters += other.laters
        self.asks += other.asks
        self.holds += other.holds
        self.errors += other.errors
        self.trials += other.trials


# --- the virtual worker (runs in the worker processes) ---

_local = threading.local()


class Meter:
    def __init__(self, out: Measured) -> None:
        self.out = out
        self.started: float | None = None
        self.slept = 0.0
        self.first = True

    def trial_done(self) -> None:
        if self.started is not None:
            cost = time.perf_counter() - self.started - self.slept
            self.out.costs.append(cost)
            if self.first:  # the worker's first trial: it reads the study's finished trials
                self.out.firsts.append(cost)
                self.first = False
            else:
                self.out.laters.append(cost)
            self.out.trials += 1
        self.started = None


def _stand_in_train(config, on_epoch_end):
    """Training's stand-in: a sleep per epoch, a macro-F1 best near lr 1e-4, a 4 KB checkpoint."""

    meter: Meter = _local.meter
    lr = config.optimizer.lr
    rng = random.Random(lr)
    quality = max(0.05, 0.85 - 0.15 * abs(math.log10(lr) + 4))
    history, best = [], None
    for epoch in range(config.epochs):
        slept = time.perf_counter()
        time.sleep(_local.epoch_seconds)
        meter.slept += time.perf_counter() - slept
        f1 = quality * (1 - 0.6 ** (epoch + 1)) + rng.gauss(0, 0.01)
        metrics = _metrics(epoch, f1, lr, rng)
        history.append(metrics)
        if best is None or f1 > best[1]["macro_f1"]:
            best = (epoch, metrics)
            config.output_dir.mkdir(parents=True, exist_ok=True)
            (config.output_dir / "best.safetensors").write_bytes(os.urandom(4096))
        if on_epoch_end(epoch, metrics):
            return _result(best, history, config, stopped_early=True)
    return _result(best, history, config)


def _metrics(epoch: int, f1: float, lr: float, rng: random.Random) -> dict:
    per_class = [min(1.0, max(0.0, f1 + rng.gauss(0, 0.05))) for _ in range(CLASSES)]
    matrix = [[rng.randrange(40) if i == j else rng.randrange(3) for j in range(CLASSES)] for i in range(CLASSES)]
    return {
        "epoch": epoch,
        "macro_f1": f1,
        "accuracy": f1 + 0.03,
        "train_images_per_second": 1000.0,
        "macro_precision": f1,
        "macro_recall": f1,
        "roc_auc": 0.9,
        "train_loss": 2.0 - f1,
        "per_class_f1": per_class,
        "confusion_matrix": matrix,
        "lr": lr,
    }


def _result(best, history, config, stopped_early: bool = False):
    from training.loop import TrainResult

    return TrainResult(
        best[0],
        best[1],
        history,
        1000.0,
        config.output_dir / "best.safetensors",
        "cpu",
        tuple(f"class{i}" for i in range(CLASSES)),
        stopped_early,
    )


def _patch(out: Measured) -> None:
    """Training replaced by the stand-in; ask and every waited-out storage error counted."""
    import search.run.lifecycle as lifecycle
    import search.run.objective as objective
    from search.run.outage import StorageOutage

    objective.train = _stand_in_train
    real_ask, real_wait = lifecycle.ask, StorageOutage.wait

    def timed_ask(*args):
        started = time.perf_counter()
        try:
            return real_ask(*args)
        finally:
            out.asks.append(time.perf_counter() - started)

    def counted_wait(self, error):
        root = error  # Optuna wraps the driver's error: say the driver's
        while (root.__cause__ or root.__context__) is not None:
            root = root.__cause__ or root.__context__
        out.errors.append(f"waited out: {str(root).strip().splitlines()[0][:120]}")
        return real_wait(self, error)

    lifecycle.ask, StorageOutage.wait = timed_ask, counted_wait


def _virtual_worker(job: Job, index: int, out: Measured) -> None:
    from search.run.lifecycle import run_trials
    from search.run.objective import Objective
    from search.run.open import create_study
    from search.run.options import RunOptions
    from search.run.progress import Progress
    from search.store import AtomicArtifactStore, open_storage
    from search.store.budget import TrialGate
    from search.study import load_study

    time.sleep(job.start_over * index / job.workers)  # as an array job's tasks start, not all in one instant
    meter = _local.meter = Meter(out)
    _local.epoch_seconds = job.epoch_seconds

    class MeteredGate(TrialGate):
        def acquire(self, give_up=None) -> bool:
            if self._held is not None:
                return True
            meter.started, meter.slept = time.perf_counter(), 0.0
            held = super().acquire(give_up)
            self.since = time.perf_counter()
            return held

        def release(self) -> None:
            if self._held is not None:
                out.holds.append(time.perf_counter() - self.since)
            super().release()

    class MeteredProgress(Progress):
        def study(self, *args) -> None:
            meter.trial_done()

    class NoPictures:  # the dashboard's pictures are drawn in a process per worker: not storage
        def submit(self, *args, **kwargs) -> None: ...

        def wait(self) -> None: ...

    options = RunOptions(
        storage_url=job.url,
        artifacts=Path(job.artifacts),
        n_trials=job.n_trials,
        timeout=None,
        workers=1000,
        worker_index=index,
        quiet=True,
        grace_period=job.grace_period,
    )
    try:
        spec = load_study("mask-lr-sweep", job.overrides)
        storage = open_storage(job.url, options.heartbeat_interval, options.grace_period)
        spec, study = create_study(spec, options, storage)
        with tempfile.TemporaryDirectory() as work:
            objective = Objective(spec, AtomicArtifactStore(options.artifacts), Path(work), Progress(quiet=True))
            objective.pictures = NoPictures()
            run_trials(study, objective, MeteredGate(job.url, spec.name), options, MeteredProgress(quiet=True))
        storage.engine.dispose()
    except Exception as error:  # noqa: BLE001 - every error is a figure here
        while (error.__cause__ or error.__context__) is not None:  # the driver's error, not Optuna's wrapper
            error = error.__cause__ or error.__context__
        text = str(error).strip().splitlines()
        out.errors.append(f"{type(error).__name__}: {text[0][:160] if text else ''}")


def _process_main(job: Job, results) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out = Measured()
    _patch(out)
    threads = [threading.Thread(target=_virtual_worker, args=(job, i, out), daemon=True) for i in job.indices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(out)


# --- the parent: studies, steps, the monitor, the table ---


def _overrides(name: str) -> list[str]:
    return [f"name={name}", f"train.epochs={EPOCHS}"]


def _spec(name: str):
    from search.study import load_study

    return load_study("mask-lr-sweep", _overrides(name))


class Monitor:
    """The most server connections of the test database, of PgBouncer's clients and of the study's
    running trials (so of workers on the study at once), seen while it runs."""

    def __init__(self, bouncer_url: str | None, study: str = "") -> None:
        self.study, self.most_running = study, 0
        self.server = psycopg2.connect(**_connect_args(SERVER))
        self.server.autocommit = True
        self.admin = None
        if bouncer_url:  # PgBouncer's admin console
            self.admin = psycopg2.connect(**_connect_args(bouncer_url) | {"dbname": "pgbouncer"})
            self.admin.autocommit = True
        self.most_server, self.most_clients = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.server.close()
        if self.admin:
            self.admin.close()

    def _watch(self) -> None:
        database = make_url(SERVER).database
        while not self._stop.wait(0.5):
            with contextlib.suppress(psycopg2.Error), self.server.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (database,)
                )
                self.most_server = max(self.most_server, cursor.fetchone()[0])
                cursor.execute(
                    "SELECT count(*) FROM trials JOIN studies USING (study_id) WHERE study_name = %s "
                    "AND trials.state = 'RUNNING'",
                    (self.study,),
                )
                self.most_running = max(self.most_running, cursor.fetchone()[0])
            if self.admin:
                with contextlib.suppress(psycopg2.Error), self.admin.cursor() as cursor:
                    cursor.execute("SHOW POOLS")
                    columns = [c.name for c in cursor.description]
                    rows = [dict(zip(columns, row)) for row in cursor.fetchall()]
                    clients = sum(r["cl_active"] + r["cl_waiting"] for r in rows if r["database"] == database)
                    self.most_clients = max(self.most_clients, clients)


def run_workers(
    url: str,
    name: str,
    n_trials: int,
    workers: int,
    processes: int,
    epoch_seconds: float,
    artifacts: str,
    limit: float,
    grace: int = 30,
    start_over: float = 0.0,
) -> Measured:
    """``workers`` virtual workers in ``processes`` processes, started over ``start_over`` seconds,
    until the study has ``n_trials``; past ``limit`` seconds the study is asked to stop (as ``search
    stop`` does) and they finish."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    jobs = [
        Job(url, name, n_trials, list(range(p, workers, processes)), epoch_seconds, artifacts, _overrides(name),
            grace_period=grace, start_over=start_over, workers=workers)
        for p in range(min(processes, workers))
    ]  # fmt: skip
    children = [context.Process(target=_process_main, args=(job, results)) for job in jobs]
    for child in children:
        child.start()
    measured, deadline, stopped = Measured(), time.monotonic() + start_over + limit, False  # from the last start
    for _ in children:
        while True:
            with contextlib.suppress(Exception):
                measured.add(results.get(timeout=1))
                break
            if not stopped and time.monotonic() > deadline:
                from search.store import open_storage, request_stop

                request_stop(optuna.load_study(study_name=name, storage=open_storage(SERVER)))
                measured.errors.append(f"not done in {limit:.0f} s: asked to stop")
                stopped = True
            if time.monotonic() > deadline + 300:
                measured.errors.append("workers did not end 300 s after the stop")
                break
    for child in children:
        child.join(10)
        if child.is_alive():
            child.kill()
    return measured


def _states(name: str) -> dict[str, int]:
    study = optuna.load_study(study_name=name, storage=SERVER)
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def _new_study(url: str, name: str) -> None:
    from search.run.open import create_study
    from search.run.options import RunOptions
    from search.store import open_storage

    options = RunOptions(storage_url=url, artifacts=Path("."), n_trials=0, timeout=None)
    create_study(_spec(name), options, open_storage(url))


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def workers_held(
    path: str,
    url: str,
    steps: list[int],
    processes: int,
    epoch_seconds: float,
    artifacts: str,
    limit: float,
    grace: int = 30,
    start_rate: float = 0.0,
) -> list[dict]:
    rows = []
    for workers in steps:
        name = f"scale-{path}-{workers}-{uuid.uuid4().hex[:6]}"
        # Two trials per worker, one from 250 workers on; a stand-in epoch long enough that these
        # machines' cores can play every worker's client (a real worker has its own machine's)
        n_trials = 2 * workers if workers < 250 else workers
        epoch = max(epoch_seconds, workers / WORKERS_PER_EPOCH_SECOND)
        _new_study(url, name)
        spread = workers / start_rate if start_rate else 0.0
        with Monitor(url if path == "pgbouncer" else None, name) as monitor:
            started = time.monotonic()
            measured = run_workers(url, name, n_trials, workers, processes, epoch, artifacts, limit, grace, spread)
            seconds = time.monotonic() - started
        states = _states(name)
        finished = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
        failed = states.get("FAIL", 0)
        exact = finished == n_trials and not states.get("RUNNING") and sum(states.values()) == n_trials + failed
        errors = len(measured.errors) + failed
        rows.append(
            {
                "path": path,
                "workers": workers,
                "errors": errors,
                "exact": exact,
                "server": monitor.most_server,
                "clients": monitor.most_clients if monitor.admin else None,
                "per_minute": 60 * finished / seconds,
                "median": _quantile(measured.costs, 0.5),
                "p99": _quantile(measured.costs, 0.99),
                "epoch": epoch,
                "spread": spread,
                "running": monitor.most_running,
                "hold": _quantile(measured.holds, 0.5),
                "first_error": measured.errors[:1],
                "seconds": seconds,
            }
        )
        _print_held(rows[-1])
        _delete(name)
        if errors or not exact:
            break
    return rows


def _fill(url: str, name: str, count: int, processes: int) -> None:
    """``count`` finished trials more, made in parallel: each with params from the study's space,
    10 epochs reported (a quarter pruned at epoch 4), and a trial's records."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        pool.starmap(
            _add_trials, [(url, name, count // processes + (p < count % processes), p) for p in range(processes)]
        )


def _add_trials(url: str, name: str, count: int, seed: int) -> None:
    from search.record import result_attrs
    from search.store import open_storage
    from search.study.distributions import sample
    from training.loop import TrainResult

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = _spec(name)
    scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed + int(time.time())))
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    rng, batch = random.Random(seed), []
    for _ in range(count):
        trial = scratch.ask()
        sample(trial, spec.space)
        lr = trial.params["lr"]
        quality = max(0.05, 0.85 - 0.15 * abs(math.log10(lr) + 4))
        epochs = 4 if rng.random() < 0.25 else EPOCHS
        curve = {e: quality * (1 - 0.6 ** (e + 1)) + rng.gauss(0, 0.01) for e in range(epochs)}
        best_epoch = max(curve, key=curve.get)
        history = [_metrics(e, curve[e], lr, rng) for e in range(epochs)]
        result = TrainResult(best_epoch, history[best_epoch], history, 1000.0, None, "cpu", (), epochs < EPOCHS)
        state = optuna.trial.TrialState.PRUNED if epochs < EPOCHS else optuna.trial.TrialState.COMPLETE
        batch.append(
            optuna.trial.create_trial(
                state=state,
                value=curve[best_epoch] if state.name == "COMPLETE" else None,
                params=trial.params,
                distributions=trial.distributions,
                intermediate_values=curve,
                user_attrs=result_attrs(result),
            )
        )
        if len(batch) == 50:
            study.add_trials(batch)
            batch = []
    study.add_trials(batch)


def storage_time(
    path: str,
    url: str,
    sizes: list[int],
    workers: int,
    per_size: int,
    processes: int,
    epoch_seconds: float,
    artifacts: str,
    limit: float,
    grown: str | None = None,
) -> list[dict]:
    """``grown``: a study an earlier run grew (and left, stopped), to go on from instead of a new one."""
    name = grown or f"grow-{path}-{uuid.uuid4().hex[:6]}"
    if grown is None:
        _new_study(url, name)
    states = _states(name)
    rows, have = [], states.get("COMPLETE", 0) + states.get("PRUNED", 0)
    for size in [s for s in sizes if s > have]:
        _fill(url, name, size - have, processes)
        measured = run_workers(url, name, size + per_size, workers, processes, epoch_seconds, artifacts, limit)
        states = _states(name)
        have = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
        rows.append(
            {
                "path": path,
                "size": size,
                "median": _quantile(measured.costs, 0.5),
                "p99": _quantile(measured.costs, 0.99),
                "first": _quantile(measured.firsts, 0.99),
                "later": _quantile(measured.laters, 0.99),
                "ask": _quantile(measured.asks, 0.5),
                "ask_p99": _quantile(measured.asks, 0.99),
                "trials": measured.trials,
                "errors": len(measured.errors) + states.get("FAIL", 0),
                "exact": have == size + per_size,
            }
        )
        _print_size(rows[-1])
    if grown is None:
        _delete(name)
    return rows


def _delete(name: str) -> None:
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=SERVER)


# --- the other path: Optuna's gRPC storage proxy, with Optuna's plain loop on both ---


def _serve_grpc(url: str, port: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")  # experimental
    from optuna.storages import RDBStorage, run_grpc_proxy_server

    run_grpc_proxy_server(RDBStorage(url), host="127.0.0.1", port=port)


def _plain_loop(path: str, target: str, name: str, threads: int, seconds: float, results) -> None:
    """Optuna's own loop, no training and nothing of the project's: ask, a sampled lr, 10 reports each
    with a pruning check, tell; as many trials as ``threads`` clients finish in ``seconds``."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")  # experimental, and heartbeats outside optimize
    times: list[float] = []

    def client() -> None:
        if path == "grpc":
            storage = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=int(target))
        else:
            storage = optuna.storages.RDBStorage(target)
        study = optuna.load_study(study_name=name, storage=storage, pruner=optuna.pruners.MedianPruner())
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            trial = study.ask()
            lr = trial.suggest_float("lr", 1e-5, 1e-3, log=True)
            for epoch in range(EPOCHS):
                trial.report(lr * epoch, epoch)
                trial.should_prune()
            study.tell(trial, lr)
            times.append(time.perf_counter() - started)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put(times)


def compare_grpc(bouncer: str, clients: int, processes: int, seconds: float) -> list[dict]:
    """Trials a minute through PgBouncer and through Optuna's gRPC proxy (one process in front of the
    server), ``clients`` clients in ``processes`` processes running Optuna's plain loop."""
    try:
        import grpc  # noqa: F401 - Optuna's proxy needs it
    except ImportError:
        print("gRPC proxy: not measured (pip install grpcio protobuf)")
        return []
    from pgbouncer_here import _free_port

    context = multiprocessing.get_context("spawn")
    rows = []
    for path in ("pgbouncer", "grpc"):
        name = f"plain-{path}-{uuid.uuid4().hex[:6]}"
        optuna.create_study(study_name=name, storage=SERVER, direction="maximize")
        server, target = None, bouncer
        if path == "grpc":
            port = _free_port()
            server = context.Process(target=_serve_grpc, args=(SERVER, port), daemon=True)
            server.start()
            time.sleep(3)
            target = str(port)
        results = context.Queue()
        children = [
            context.Process(target=_plain_loop, args=(path, target, name, clients // processes, seconds, results))
            for _ in range(processes)
        ]
        for child in children:
            child.start()
        times = [t for _ in children for t in results.get(timeout=seconds + 300)]
        for child in children:
            child.join()
        if server is not None:
            server.kill()
        rows.append(
            {
                "path": path,
                "clients": clients,
                "per_minute": 60 * len(times) / seconds,
                "median": _quantile(times, 0.5),
                "p99": _quantile(times, 0.99),
            }
        )
        print(
            f"{path:<10} {clients:>7} {rows[-1]['per_minute']:>10.0f} {rows[-1]['median']:>14.3f} "
            f"{rows[-1]['p99']:>6.2f}",
            flush=True,
        )
        _delete(name)
    return rows


READS = f"{'running':>7} {'rows':>7} {'worker s (Optuna)':>17} {'database s':>10} {'worker s (search)':>17}"


def read_cost(url: str, running: int) -> None:
    """What one read of a study costs a worker and the database, with ``running`` trials running,
    each as a worker leaves it mid-trial: its params, start records (the config) and 5 reports.
    Optuna's storage reads every unfinished trial whole at each ``get_trials``. The database's part
    is the same rows fetched by plain SQL. The project's sampler, pruner and retention share one
    read of the finished trials a trial, fetching (lean) those the worker has not seen
    (``finished_trials``), and TPE's constant liar reads the running trials lean once a trial
    (``running_trials``): the cost of both is last, on the same study."""
    from search.record import write_start
    from search.store import ask, open_storage
    from search.store._trials import finished_trials, running_trials
    from search.study.distributions import sample

    name = f"reads-{uuid.uuid4().hex[:6]}"
    spec = _spec(name)
    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(running):
            trial = ask(study)
            write_start(trial, spec.trial_config(sample(trial, spec.space), None))
            for epoch in range(5):
                trial.report(0.5, epoch)
    reader = optuna.load_study(study_name=name, storage=open_storage(url))
    reader.get_trials(deepcopy=False)  # a worker's cache holds the study already
    started = time.perf_counter()
    reader.get_trials(deepcopy=False)
    worker = time.perf_counter() - started
    tables = ("trials", "trial_params", "trial_user_attributes", "trial_system_attributes", "trial_values",
              "trial_intermediate_values")  # fmt: skip
    with contextlib.closing(psycopg2.connect(**_connect_args(url))) as db, db.cursor() as cursor:
        cursor.execute("SELECT trial_id FROM trials t JOIN studies s USING (study_id) WHERE s.study_name = %s", (name,))
        ids = [row[0] for row in cursor.fetchall()]
        started, rows = time.perf_counter(), 0
        for table in tables:
            cursor.execute(f"SELECT * FROM {table} WHERE trial_id = ANY(%s)", (ids,))
            rows += len(cursor.fetchall())
        database = time.perf_counter() - started
    finished_trials(reader)  # as the worker's own first read
    started = time.perf_counter()
    finished_trials(reader)
    running_trials(reader)
    search = time.perf_counter() - started
    print(f"{running:>7} {rows:>7} {worker:>17.3f} {database:>10.3f} {search:>17.3f}", flush=True)
    _delete(name)


HELD = (
    f"{'path':<10} {'workers':>7} {'starts s':>8} {'epoch s':>7} {'at once':>7} {'errors':>6} {'exact':>5} "
    f"{'server conns':>12} {'clients':>7} {'trials/min':>10} {'storage s/trial p50':>19} {'p99':>6} {'lock s p50':>10}"
)
SIZES = (
    f"{'path':<10} {'trials':>6} {'storage s/trial p50':>19} {'p99':>6} {'first trial p99':>15} "
    f"{'later trials p99':>16} {'ask p50':>7} "
    f"{'ask p99':>7} {'share of 10 min':>15} {'errors':>6} {'exact':>5}"
)
FIRST_TARGET, P99_TARGET = 5.0, 2.0  # seconds at 10,000 trials: a joining worker's first trial, any trial's p99


def _print_held(row: dict) -> None:
    clients = "-" if row["clients"] is None else str(row["clients"])
    print(
        f"{row['path']:<10} {row['workers']:>7} {row['spread']:>8.0f} {row['epoch']:>7.1f} {row['running']:>7} "
        f"{row['errors']:>6} "
        f"{'yes' if row['exact'] else 'NO':>5} {row['server']:>12} {clients:>7} {row['per_minute']:>10.0f} "
        f"{row['median']:>19.3f} {row['p99']:>6.2f} {row['hold']:>10.3f}"
        + (f"   first error: {row['first_error'][0]}" if row["first_error"] else ""),
        flush=True,
    )


def _print_size(row: dict) -> None:
    share = 100 * row["median"] / REAL_TRIAL_SECONDS
    print(
        f"{row['path']:<10} {row['size']:>6} {row['median']:>19.3f} {row['p99']:>6.2f} {row['first']:>15.2f} "
        f"{row['later']:>16.2f} "
        f"{row['ask']:>7.3f} {row['ask_p99']:>7.3f} {share:>14.3f}% {row['errors']:>6} "
        f"{'yes' if row['exact'] else 'NO':>5}",
        flush=True,
    )


def main() -> None:
    stop_everything_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="held,reads,grpc,sizes", help="which parts to run")
    parser.add_argument("--paths", default="direct,pgbouncer")
    parser.add_argument("--steps", default="10,25,50,100,250,500,1000", help="workers at each step")
    parser.add_argument("--sizes", default="1000,5000,10000", help="study sizes for the storage time")
    parser.add_argument("--processes", type=int, default=4, help="processes the virtual workers are spread over")
    parser.add_argument("--epoch-seconds", type=float, default=1.0, help="the stand-in's sleep per epoch")
    parser.add_argument("--size-workers", type=int, default=8, help="workers that measure the storage time")
    parser.add_argument("--per-size", type=int, default=48, help="trials measured at each size")
    parser.add_argument("--grpc-clients", type=int, default=64, help="clients of the PgBouncer / gRPC comparison")
    parser.add_argument("--grpc-seconds", type=float, default=60, help="seconds of the PgBouncer / gRPC comparison")
    parser.add_argument("--limit", type=float, default=600, help="seconds a step may take before it is stopped")
    parser.add_argument("--grown", help="sizes: go on with this study, grown by an earlier run, not a new one")
    parser.add_argument(
        "--start-rate", type=float, default=0.0,
        help="workers started per second, as an array job's tasks start (0: all at once); a few cores cannot "
        "play a thousand clients' start-up at once, where each real worker has its own machine's",
    )  # fmt: skip
    parser.add_argument(
        "--grace-period", type=int, default=30,
        help="the workers' --grace-period: on a few cores, a thousand virtual workers' heartbeats wait for the CPU",
    )  # fmt: skip
    args = parser.parse_args()
    paths, parts = args.paths.split(","), args.parts.split(",")
    steps = [int(s) for s in args.steps.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    artifacts = tempfile.mkdtemp(prefix="scale-artifacts-")
    os.environ.setdefault("MASK_DATA", artifacts)  # the study file names it; nothing is read
    with contextlib.closing(psycopg2.connect(**_connect_args(SERVER))) as db, db.cursor() as cursor:
        cursor.execute("SHOW max_connections")
        max_connections = cursor.fetchone()[0]
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0].split()[0]
    print(
        f"storage_scale: {os.cpu_count()} CPU cores; PostgreSQL {version} (max_connections {max_connections}); "
        f"mask study's sampler and pruner, {EPOCHS} epochs of {args.epoch_seconds} s each (stand-in training); "
        f"workers as threads over {args.processes} processes, each its own storage client; heartbeats every 10 s, "
        f"a trial lost after {args.grace_period} s without one",
        flush=True,
    )
    held, grown = [], []
    try:
        with pgbouncer(SERVER) as bouncer:
            urls = {"direct": SERVER, "pgbouncer": bouncer}
            print(
                f"\nWorkers held (a new study at each step: 2 trials per worker, 1 from 250 workers on; the stand-in's "
                f"epoch lasts workers / {WORKERS_PER_EPOCH_SECOND} s, at least {args.epoch_seconds} s)\n" + HELD,
                flush=True,
            )
            for path in paths if "held" in parts else []:
                held += workers_held(
                    path,
                    urls[path],
                    steps,
                    args.processes,
                    args.epoch_seconds,
                    artifacts,
                    args.limit,
                    args.grace_period,
                    args.start_rate,
                )
            if "reads" in parts:
                print(f"\nA worker's read of the study with trials running (Optuna reads every one whole)\n{READS}")
                for running in (100, 1000):
                    read_cost(bouncer, running)
            if "grpc" in parts:
                print(
                    f"\nPgBouncer or Optuna's gRPC proxy: Optuna's plain loop (ask, 10 reports and pruning checks, "
                    f"tell), no training, {args.grpc_seconds:.0f} s\n{'path':<10} {'clients':>7} {'trials/min':>10} "
                    f"{'s/trial p50':>14} {'p99':>6}",
                    flush=True,
                )
                compare_grpc(bouncer, args.grpc_clients, args.processes, args.grpc_seconds)
            if "sizes" in parts:
                print(
                    f"\nStorage time per trial as the study grows ({args.size_workers} workers, {args.per_size} "
                    f"trials at each size; share of a {REAL_TRIAL_SECONDS // 60}-minute trial)\n" + SIZES,
                    flush=True,
                )
            for path in paths if "sizes" in parts else []:
                grown += storage_time(
                    path,
                    urls[path],
                    sizes,
                    args.size_workers,
                    args.per_size,
                    args.processes,
                    args.epoch_seconds / 4,
                    artifacts,
                    args.limit,
                    args.grown,
                )
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)
    _summary(held, grown)


def _summary(held: list[dict], grown: list[dict]) -> None:
    print()
    for path in dict.fromkeys(row["path"] for row in held):
        good = [row for row in held if row["path"] == path and row["errors"] == 0 and row["exact"]]
        broke = [row for row in held if row["path"] == path and (row["errors"] or not row["exact"])]
        most = max(good, key=lambda row: row["workers"]) if good else None
        said = f"held {most['workers']} workers with 0 storage errors and the exact budget" if most else "held no step"
        said += f"; broke at {broke[0]['workers']}" if broke else ""
        if most:  # trials start one at a time under the study's lock: its hold bounds the study's pace
            starts = 60 / most["hold"]
            supports = starts * REAL_TRIAL_SECONDS / 60
            said += (
                f"; {most['per_minute']:.0f} trials/min at {most['workers']} workers; the study's lock, held "
                f"{most['hold']:.3f} s per trial start there, allows {starts:.0f} starts/min, so about {supports:.0f} "
                f"real workers at {REAL_TRIAL_SECONDS // 60}-minute trials"
            )
        print(f"{path}: {said}")
    for row in grown:
        if row["size"] == max(r["size"] for r in grown):
            print(
                f"{row['path']}: storage share of a {REAL_TRIAL_SECONDS // 60}-minute trial at {row['size']} trials: "
                f"{100 * row['median'] / REAL_TRIAL_SECONDS:.3f} % (median), "
                f"{100 * row['p99'] / REAL_TRIAL_SECONDS:.3f} % (p99); a joining worker's first trial "
                f"{row['first']:.2f} s at p99 (target under {FIRST_TARGET:.0f} s: "
                f"{'met' if row['first'] < FIRST_TARGET else 'MISSED'}), any trial {row['p99']:.2f} s at p99 "
                f"(target under {P99_TARGET:.0f} s: {'met' if row['p99'] < P99_TARGET else 'MISSED'}), a worker's "
                f"later trials {row['later']:.2f} s at p99"
            )


def _connect_args(url: str) -> dict:
    parsed = make_url(url)
    return {"host": parsed.host, "port": parsed.port or 5432, "user": parsed.username, "dbname": parsed.database}


if __name__ == "__main__":
    main()
