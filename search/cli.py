"""The ``search`` command: a dict of subcommands; ``main`` turns every project error into one line."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from training.errors import SearchServiceError


def _storage(args: argparse.Namespace) -> str:
    from search.storage import resolve_storage_url

    return resolve_storage_url(args.storage)


def _open_study(args: argparse.Namespace):
    from search.storage import load_existing, open_storage

    return load_existing(open_storage(_storage(args)), args.study)


def _store(args: argparse.Namespace):
    from search.storage import AtomicArtifactStore, artifact_dir

    return AtomicArtifactStore(artifact_dir(args.artifacts))


def cmd_run(args: argparse.Namespace) -> int:
    spawning = args.worker_index is None and (args.workers > 1 or bool(args.trials_per_gpu))
    if spawning:
        from search.workers import start_worker_server

        start_worker_server()  # the workers' imports happen there while this process does its own

    from search.studyfile import load_study
    from search.workers import GPU_WORKERS, run_workers  # light: no torch until run_workers runs

    spec = load_study(args.study, args.set)  # before the heavy imports: a typo is answered at once
    sharing = int(os.environ.get(GPU_WORKERS, "1")) if args.worker_index is not None else 1  # set by run_workers
    if sharing > 1:
        spec = spec.model_copy(update={"train": spec.train.sharing_the_gpu(sharing)})
    from search.runner import RunOptions, install_signal_handlers, worker_loop
    from search.storage import artifact_dir, is_sqlite

    # huggingface_hub (timm's pretrained weights) prints its warnings (a download's retries) through
    # a handler of its own and again through ours: once, with our prefix, is enough.
    logging.getLogger("huggingface_hub").handlers.clear()

    url = _storage(args)
    gpus: list[str] = []
    if spawning:
        import torch

        from search.workers import worker_gpus

        gpus = worker_gpus(spec.train.device, torch.cuda.device_count())
        if args.trials_per_gpu:  # K workers on each GPU: pays where one trial leaves the GPU idle
            args.workers = args.trials_per_gpu * max(1, len(gpus))
    options = RunOptions(
        storage_url=url,
        artifacts=artifact_dir(args.artifacts),
        n_trials=args.n_trials or spec.budget.n_trials,
        timeout=args.timeout or spec.budget.timeout,
        workers=args.workers,
        worker_index=args.worker_index or 0,
        quiet=args.quiet,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period or 3 * args.heartbeat_interval,
        data_said=args.worker_index is not None,
    )
    if spawning:
        from search.progress import Progress
        from search.runner import open_run
        from search.workers import mps_daemon, mps_running, packing_warning
        from training.data.sources import cache_folder, default_cache_dir

        # What every worker would find wrong is found here, once, before any of them starts (the
        # artifact folder, the storage and space, the device, the data); the study is made once, so
        # workers don't race to create it, and the images are decoded once into the machine's
        # cache, which the workers then map (the skipped images and the progress printed once).
        open_run(spec, options, Progress(args.quiet))
        # some GPU gets more than one worker (--trials-per-gpu K > 1, or --workers N above the GPUs)
        packed = args.workers > len(gpus) > 0
        if packed and (warning := packing_warning(-(-args.workers // len(gpus)), len(gpus), args.mps or mps_running())):
            print(warning, file=sys.stderr)
        if is_sqlite(url):
            print(
                f"search: {args.workers} workers share one SQLite file; writes are serialised. "
                "For many workers or machines use PostgreSQL (--storage postgresql+psycopg2://...).",
                file=sys.stderr,
            )
        argv = _without_option(args.argv, ("--workers", "--storage", "--trials-per-gpu"))
        if spec.train.device.startswith("cuda:"):
            argv += ["--set", "train.device=cuda"]  # the one GPU each worker sees is the one it named
        if (cache := cache_folder(spec.data.cache_dir)) not in (None, default_cache_dir(spec.data.cache_dir)):
            argv += ["--set", f"data.cache_dir={cache}"]  # the fallback this process decoded into, said once
        if not (args.mps and packed):
            return run_workers(argv, options, gpus)
        with mps_daemon() as mps:
            return run_workers(argv, options, gpus, mps)
    install_signal_handlers()
    study = worker_loop(spec, options)
    if not args.worker_index and not args.quiet:
        _print_best(study)
    return 0


def _without_option(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without the named options and their values (either ``--x v`` or ``--x=v``)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in names:
            skip = True
            continue
        if any(arg.startswith(f"{name}=") for name in names):
            continue
        out.append(arg)
    return out


def _print_best(study) -> None:
    from search.runner import best_of

    best = best_of(study)
    if best is None:
        print("no complete trial", file=sys.stderr)
    else:
        print(f"best trial {best[0]}: macro-F1 {best[1]:.4f}", file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> int:
    from search.status import status_text
    from search.storage import load_existing, open_storage

    storage = open_storage(_storage(args))
    study = load_existing(storage, args.study)
    print(status_text(study, top=args.top, stale=storage.stale_trial_numbers(args.study)))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from optuna.trial import TrialState

    from search.storage import request_stop

    study = _open_study(args)
    request_stop(study)
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    now = f"finish the {running} running first (search status shows them)" if running else "none is running one now"
    print(
        f"asked the workers of '{study.study_name}' to stop: they start no new trial, and {now}; a run started from "
        "now on goes on",
        file=sys.stderr,
    )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from search.delete import delete_study
    from search.storage import load_existing, open_storage

    storage = open_storage(_storage(args))
    print(delete_study(storage, load_existing(storage, args.study), _store(args), args.yes), file=sys.stderr)
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from search.export import choose_trial

    trial = choose_trial(_open_study(args), None)
    shown = {k: v for k, v in trial.user_attrs.items() if k not in ("config", "confusion_matrix")}
    print(
        json.dumps({"number": trial.number, "value": trial.value, "params": trial.params, "metrics": shown}, indent=2)
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from search.export import export_all_data, export_checkpoint, export_top

    study, store = _open_study(args), _store(args)
    if args.top is not None:
        exported = export_top(study, store, Path(args.out), args.top, args.force, args.retrain, args.all_data)
    elif args.all_data:
        exported = [(export_all_data(study, Path(args.out), args.trial, args.force), Path(args.out))]
    else:
        exported = [export_checkpoint(study, store, Path(args.out), args.trial, args.force, args.retrain)]
    for trial, out in exported:
        value = f"{trial.value:.4f}" if trial.value is not None else "n/a"
        if args.all_data:
            epochs = trial.user_attrs["best_epoch"] + 1
            print(f"trial {trial.number}'s params trained on all the data for {epochs} epoch(s), its best "
                  f"(its macro-F1 then {value}), exported to {out}")  # fmt: skip
        else:
            print(f"trial {trial.number} (macro-F1 {value}) exported to {out}")
    if args.top is not None and len(exported) < args.top:
        print(f"only {len(exported)} complete trial(s) in '{study.study_name}'; all exported", file=sys.stderr)
    return 0


def cmd_studies(args: argparse.Namespace) -> int:
    import optuna

    from search.inputs import INPUTS_ATTR
    from search.status import setup_text
    from search.storage import open_storage

    summaries = optuna.get_all_study_summaries(open_storage(_storage(args)), include_best_trial=True)
    print(f"{'study':30} {'trials':>6} {'best macro-F1':>14}  {'started':16}  what it trains")
    for s in summaries:
        best = f"{s.best_trial.value:.4f}" if s.best_trial is not None else "-"
        started = s.datetime_start.strftime("%Y-%m-%d %H:%M") if s.datetime_start else "-"
        trains = setup_text(s.user_attrs.get("spec"), s.user_attrs.get(INPUTS_ATTR)) or "-"
        print(f"{s.study_name:30} {s.n_trials:>6} {best:>14}  {started:16}  {trains}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import socket
    from wsgiref.simple_server import WSGIServer, make_server

    import optuna_dashboard

    from search.storage import open_storage

    storage = open_storage(_storage(args))
    study = _open_study(args)
    app = optuna_dashboard.wsgi(storage, artifact_store=_store(args))

    class Server(WSGIServer):  # the wsgiref server optuna-dashboard's own run_server uses, bound here first
        address_family = socket.AF_INET6 if ":" in args.host else socket.AF_INET

    try:
        server = make_server(args.host, args.port, app, server_class=Server)
    except OSError as error:  # the port is taken, or the address is not this machine's
        raise SearchServiceError(
            f"cannot serve the dashboard on {args.host}:{args.port}: {error.strerror}; give another --port or --host"
        ) from None
    where = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address in a URL
    print(
        f"dashboard for '{study.study_name}': http://{where}:{server.server_port}/dashboard/studies/{study._study_id}",
        file=sys.stderr,
    )
    with server, contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops it; nothing to mark
        server.serve_forever()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from search.report import write_report

    page = write_report(_open_study(args), _store(args), Path(args.out))
    print(f"report written to {page}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from search.predict import write_predictions

    rows = write_predictions(
        [Path(c) for c in args.checkpoint], Path(args.images), Path(args.out),
        info=Path(args.info) if args.info else None, flip_tta=args.tta, batch_size=args.batch_size,
        quiet=args.quiet, force=args.force,
    )  # fmt: skip
    print(f"{rows} predictions written to {args.out}", file=sys.stderr)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "predict": cmd_predict,
    "delete": cmd_delete,
    "stop": cmd_stop,
    "report": cmd_report,
    "run": cmd_run,
    "status": cmd_status,
    "best": cmd_best,
    "export": cmd_export,
    "studies": cmd_studies,
    "dashboard": cmd_dashboard,
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what, and where to look), exit code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _count(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``minimum`` (to ``maximum``), else a usage error naming it."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f"{minimum} or more"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:  # also NaN
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--storage", help="SQLAlchemy URL (default: $SEARCH_STORAGE or .search/studies.db)")
    common.add_argument("--artifacts", help="artifact folder (default: $SEARCH_ARTIFACTS or .search/artifacts)")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument("--quiet", "-q", action="store_true", help="print only errors")

    parser = _Parser(prog="search", description="Hyperparameter search for timm image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run (or continue) a study")
    run.add_argument("--study", required=True, help="study name in studies/ or a YAML path")
    run.add_argument("--n-trials", type=_count(1), help="finished trials the study should reach")
    run.add_argument("--timeout", type=_seconds, help="seconds after which no new trial starts")
    run.add_argument("--workers", type=_count(1), default=1, help="worker processes on this machine")
    run.add_argument("--trials-per-gpu", type=_count(1), metavar="K", help="K workers per GPU (sets --workers)")
    run.add_argument(
        "--mps", action="store_true",
        help="where a GPU gets several workers: run them under a CUDA MPS daemon of this run (kernels run at once)",
    )  # fmt: skip
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a study field")
    run.add_argument("--heartbeat-interval", type=_count(1), default=10, help=argparse.SUPPRESS)
    run.add_argument("--grace-period", type=_count(1), default=None, help=argparse.SUPPRESS)
    # set by --workers for each worker it starts (with --workers N): this process is one of them
    run.add_argument("--worker-index", type=_count(0), default=None, help=argparse.SUPPRESS)

    stop = sub.add_parser("stop", parents=[common], help="let every running worker finish its trial and stop")
    stop.add_argument("--study", required=True)

    for name, text in (
        ("status", "counts, running and failed trials, best, top trials"),
        ("best", "the best trial's params and metrics"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("--study", required=True)
        if name == "status":
            p.add_argument("--top", type=_count(1), default=10)

    export = sub.add_parser("export", parents=[common], help="write a trial's checkpoint (or the best K)")
    export.add_argument("--study", required=True)
    which = export.add_mutually_exclusive_group()
    which.add_argument("--trial", type=_count(0), help="trial number (default: the best)")
    which.add_argument(
        "--top", type=_count(1), metavar="K", help="the K best trials, into the folder --out (an ensemble for predict)"
    )
    export.add_argument("--out", required=True, help="the checkpoint file (with --top, the folder) to write")
    export.add_argument("--force", action="store_true", help="overwrite --out")
    how = export.add_mutually_exclusive_group()
    how.add_argument("--retrain", action="store_true", help="train again when no checkpoint is stored")
    how.add_argument(
        "--all-data", action="store_true",
        help="train the trial's params again on all the data (its validation split too) up to its best epoch",
    )  # fmt: skip

    sub.add_parser("studies", parents=[common], help="list the studies in a storage")

    report = sub.add_parser("report", parents=[common], help="a static HTML page on the data, best model, search")
    report.add_argument("--study", required=True)
    report.add_argument("--out", required=True, help="folder for index.html and its pictures")

    predict = sub.add_parser("predict", parents=[common], help="predict image files with a checkpoint (or an ensemble)")
    predict.add_argument(
        "--checkpoint", required=True, nargs="+", metavar="FILE",
        help="a checkpoint written by search export; several: their class probabilities averaged (an ensemble)",
    )  # fmt: skip
    predict.add_argument("--images", required=True, help="folder of images")
    predict.add_argument("--info", help="the competition's info.csv (ImageID,ans): fill ans in its order")
    predict.add_argument("--out", required=True, help="CSV to write")
    predict.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    predict.add_argument("--batch-size", type=_count(1), default=256)
    predict.add_argument("--force", action="store_true", help="overwrite --out")

    delete = sub.add_parser("delete", parents=[common], help="delete a study and the files it stored")
    delete.add_argument("--study", required=True)
    delete.add_argument("--yes", action="store_true", help="delete (without it: say what would be deleted)")

    dash = sub.add_parser("dashboard", parents=[common], help="optuna-dashboard on the same storage")
    dash.add_argument("--study", required=True)
    dash.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    dash.add_argument("--port", type=_count(0, 65535), default=8080)
    return parser


def entry() -> None:
    """The ``search`` command (and ``python -m search``): ``main``, then out at once. Python's own
    teardown of what a run imported (torch, timm, matplotlib) takes 1-2 s on 2 cores after the work
    is done and written; nothing of ours waits for it (the workers, the drawing process and the
    storage are finished by then). An exception ``main`` lets through (``--debug``) exits as usual."""
    code = main()
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader went away after main's last write
        code = code or 141
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # argparse has printed its one-line usage error
        return int(exit.code or 0)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # a worker of `search run --workers N` says which one it is, as its progress lines do
    worker = getattr(args, "worker_index", None)
    logging.basicConfig(
        level=logging.WARNING, format=f"{'' if worker is None else f'[worker {worker}] '}search: %(message)s"
    )
    if not args.debug:
        warnings.simplefilter("ignore")
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.DEBUG if args.debug else optuna.logging.ERROR)
    try:
        return COMMANDS[args.command](args)
    except SearchServiceError as error:
        if args.debug:
            raise
        print(f"search: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as interrupt:
        trial = getattr(interrupt, "trial", None)
        marked = "no trial was running" if trial is None else f"trial {trial} is marked FAIL (interrupted)"
        print(f"search: interrupted; {marked}; run again to continue", file=sys.stderr)
        return getattr(interrupt, "exit_code", 130)
    except BrokenPipeError:  # the reader went away (`search status | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail again
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it
