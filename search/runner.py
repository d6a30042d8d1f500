"""Running a study: one worker loop per process, ``--workers N`` processes per machine.

``n_trials`` is a budget for the whole study, whoever runs it: a worker starts a trial only
while finished + running trials are below it, deciding under a lock shared by all workers (see
``TrialGate``). A killed worker's trial goes stale, turns FAIL through the heartbeat and is
re-queued, so the study still ends with exactly ``n_trials`` finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from search.inputs import as_new_study, check_inputs, data_place, trained_inputs
from search.objective import Objective, TrialFailed
from search.progress import Progress
from search.pruners import build_pruner
from search.samplers import build_sampler
from search.space import fit_space, recorded_distributions
from search.storage import (
    CHECKPOINT_ATTR,
    STORAGE_ERRORS,
    AtomicArtifactStore,
    StorageError,
    TrialGate,
    describe_db_error,
    open_storage,
    redact,
    stop_requests,
)
from search.studyfile import Study, changed_setup
from training import fetch_weights, prepare_data, resolve_device
from training.data.sources import load_source
from training.errors import ConfigError, SearchServiceError
from training.files import make_folder

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0
MAX_FAILURES_IN_A_ROW = 5


class Interrupted(KeyboardInterrupt):
    """SIGTERM turned into an exception, so the running trial is marked FAIL like on Ctrl-C."""

    exit_code = 143


@dataclass(frozen=True)
class RunOptions:
    storage_url: str
    artifacts: Path
    n_trials: int
    timeout: float | None
    workers: int = 1
    worker_index: int = 0
    quiet: bool = False
    heartbeat_interval: int = 10
    grace_period: int = 30
    data_said: bool = False  # a worker of `--workers N`: its parent opened the run and said the data's warnings


def state_counts(study: optuna.Study) -> Counter:
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def all_taken(counts: Counter, n_trials: int) -> bool:
    """Finished and running trials make up the whole budget: nothing is left to start."""
    return counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"] >= n_trials


def best_of(study: optuna.Study) -> tuple[int, float] | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = max(complete, key=lambda t: t.value)
    return best.number, float(best.value)


def create_study(spec: Study, options: RunOptions) -> tuple[Study, optuna.Study]:
    """Create the study or load it by name; record its spec once; queue the known-good configs.
    Returns the spec with its space as the study's earlier trials can take it (``fit_space``):
    refused before anything is written where they cannot."""
    storage = open_storage(options.storage_url, options.heartbeat_interval, options.grace_period)
    space = fit_space(spec.name, recorded_distributions(storage, spec.name), spec.space)
    spec = spec.model_copy(update={"space": space})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental samplers and options
        study = optuna.create_study(
            study_name=spec.name,
            storage=storage,
            direction="maximize",
            sampler=build_sampler(spec.sampler, spec.space, spec.seed + options.worker_index),
            pruner=build_pruner(spec.pruner),
            load_if_exists=True,
        )
    if "spec" not in study.user_attrs:
        study.set_user_attr("spec", json.dumps(spec.model_dump(mode="json"), sort_keys=True))
    elif changes := changed_setup(json.loads(study.user_attrs["spec"]), spec):
        then = ", ".join(f"{key}={_clipped(before)}" for key, before, _ in changes[:3])
        now = ", ".join(f"{key}={_clipped(after)}" for key, _, after in changes[:3])
        raise ConfigError(
            f"study '{spec.name}' was made with {then}; this run has {now}, and its trials would not compare "
            f"with the study's earlier ones. Put these back, run the change {as_new_study(spec.name)}"
        )
    for params in spec.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    return spec, study


def _clipped(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AfterTrial:
    """After each trial: drop checkpoints outside the best ``keep`` complete trials, show progress,
    and stop the worker when trials keep failing (a broken setup must not burn the whole budget).

    One read of the study's trials serves all three (each read is several queries on a remote database).
    """

    def __init__(self, store: AtomicArtifactStore, keep: int, progress: Progress, n_trials: int) -> None:
        self.store = store
        self.keep = keep
        self.progress = progress
        self.n_trials = n_trials
        self.failures_in_a_row = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.failures_in_a_row = self.failures_in_a_row + 1 if trial.state == TrialState.FAIL else 0
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            reason = trial.user_attrs.get("failure_reason", "see the log")
            raise SearchServiceError(
                f"{self.failures_in_a_row} trials in a row failed on this worker, the last with: {reason}; "
                "fix the cause and run again to continue"
            )
        trials = study.get_trials(deepcopy=False)
        complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value, reverse=True)
        if trial.state == TrialState.COMPLETE:
            for old in complete[self.keep :]:
                artifact_id = old.user_attrs.get(CHECKPOINT_ATTR)
                if artifact_id:
                    try:
                        self.store.remove(artifact_id)
                    except ArtifactNotFound:
                        pass  # already removed by this or another worker
        if trial.state == TrialState.FAIL:
            self.progress.line(f"trial {trial.number} failed: {trial.user_attrs.get('failure_reason', 'see log')}")
        best = (complete[0].number, float(complete[0].value)) if complete else None
        self.progress.study(study.study_name, Counter(t.state.name for t in trials), self.n_trials, best)


def open_run(spec: Study, options: RunOptions, progress: Progress) -> tuple[Study, AtomicArtifactStore, optuna.Study]:
    """What a run needs before its first trial, each mistake one line before anything trains: the
    artifact folder (before the decode, so it is answered at once), the device (one this machine
    lacks), the study (a space its trials cannot take, another setup than it was made with), the
    data's listing (a wrong root is answered before the hub's time-outs), the pretrained weights
    (fetched once into the machine's cache; a hub out of reach), the data (decoded once, into the
    machine's cache), and that the images and weights file are those the study was made on
    (``check_inputs``).
    `search run --workers N` calls it once itself, before its workers start."""
    store = AtomicArtifactStore(options.artifacts)
    resolve_device(spec.train.device)
    spec, study = create_study(spec, options)
    dataset = load_source(spec.data)
    fetch_weights(spec.model)
    prepared = prepare_data(spec.data, spec.seed, progress=progress.decode, dataset=dataset)
    if not options.data_said:
        for note in prepared.notes:
            log.warning("%s", note)
    check_inputs(study, trained_inputs(prepared, spec.data, spec.model), data_place(spec.data))
    return spec, store, study


def worker_loop(spec: Study, options: RunOptions) -> optuna.Study:
    """Run trials until the study has ``n_trials`` finished or the timeout passes."""
    prefix = f"[worker {options.worker_index}] " if options.workers > 1 else ""
    progress = Progress(options.quiet, prefix)
    spec, store, study = open_run(spec, options, progress)
    if options.worker_index == 0:  # after the data loaded: a bad data root is the only line printed
        progress.line(f"study '{spec.name}' on {redact(options.storage_url)}, {options.n_trials} trials")
    gate = TrialGate(options.storage_url, spec.name)
    with scratch_folder(options.artifacts.parent / "work" / spec.name) as work_dir:
        objective = Objective(spec, store, work_dir, gate, progress)
        after_trial = AfterTrial(store, spec.checkpoints.keep_top_k, progress, options.n_trials)
        _run_trials(study, objective, after_trial, gate, options, progress, stop_requests(study))
        objective.pictures.wait()
    return study


def _run_trials(
    study: optuna.Study, objective: Objective, after_trial: AfterTrial, gate: TrialGate, options: RunOptions,
    progress: Progress, stops: int,
) -> None:  # fmt: skip
    """One trial after another, while the study wants more, the timeout has not passed and nobody
    asked the study to stop since this worker started (``stops``: the count of requests then)."""
    deadline = time.monotonic() + options.timeout if options.timeout else None
    outage = StorageOutage(progress)
    started = 0
    while deadline is None or time.monotonic() < deadline:
        try:
            gate.acquire()
            if stop_requests(study) > stops:
                progress.line(f"study '{study.study_name}' was asked to stop (search stop): no new trial here")
                break
            counts = state_counts(study)
            if counts["RUNNING"] and all_taken(counts, options.n_trials):
                # Before waiting on the running trials: a killed worker's turns FAIL (and is queued
                # again) here. Otherwise Optuna does this itself when the next trial starts.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    optuna.storages.fail_stale_trials(study)
                counts = state_counts(study)
            finished = counts["COMPLETE"] + counts["PRUNED"]
            if finished >= options.n_trials:
                if not started and options.worker_index == 0:
                    progress.line(
                        f"the study has {finished} finished trials of the {options.n_trials} asked for: nothing to "
                        "run (a larger --n-trials or budget.n_trials goes on)"
                    )
                break
            if all_taken(counts, options.n_trials):
                gate.release()  # the rest is taken; wait in case one of them fails
                time.sleep(POLL_SECONDS)
                continue
            started += 1
            study.optimize(
                objective,
                n_trials=1,
                catch=(TrialFailed,),
                callbacks=[after_trial],
            )
            outage.over()
        except Exception as error:
            cause = storage_failure(error)
            if cause is None:
                raise
            outage.wait(cause)  # the running trial is lost; the heartbeat fails it and it is retried
        finally:
            gate.release()


@contextlib.contextmanager
def scratch_folder(root: Path) -> Iterator[Path]:
    """This worker's folder under ``root`` for its running trial's checkpoint until it is stored,
    removed when the worker ends, however it ends, with ``root`` and its parent if that leaves them
    empty. Named by machine and process, so the workers of many machines sharing ``root`` (beside a
    shared artifact folder) never meet; what a killed worker of this machine left is removed by the
    next one to start here. The folder exists from the start, so while a worker runs, ``root`` is
    not empty and no other worker's removal of it can take the folder away mid-trial."""
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        for left in root.iterdir():
            name, _, pid = left.name.rpartition("-")
            if name == host and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(left, ignore_errors=True)
    folder = root / f"{host}-{os.getpid()}"
    with contextlib.suppress(OSError):  # a parent that another worker removed (empty) on the way: once more
        folder.mkdir(parents=True, exist_ok=True)
    make_folder(folder, "the worker's scratch folder", "give another --artifacts (it is made beside it)")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for emptied in (root, root.parent):
            with contextlib.suppress(OSError):  # not empty: another worker's folder is there
                os.rmdir(emptied)


def _alive(pid: int) -> bool:
    """Whether a process of this machine has ``pid``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def storage_failure(error: BaseException) -> BaseException | None:
    """The database error behind ``error``, if any: Optuna may re-raise it as something else
    (an assertion in its trial bookkeeping) while the database is away."""
    while error is not None:
        if isinstance(error, STORAGE_ERRORS):
            return error
        error = error.__context__
    return None


class StorageOutage:
    """A database that went away (restart, network): wait and try again, for a bounded time."""

    def __init__(self, progress: Progress, limit_seconds: float = 120.0) -> None:
        self.progress = progress
        self.limit = limit_seconds
        self.since: float | None = None

    def wait(self, error: Exception) -> None:
        now = time.monotonic()
        self.since = self.since or now
        first = describe_db_error(error)
        if now - self.since > self.limit:
            raise StorageError(f"storage unreachable for {self.limit:.0f} s: {first}") from None
        self.progress.line(f"storage error ({first}); retrying")
        time.sleep(min(5.0, 0.5 + now - self.since))

    def over(self) -> None:
        self.since = None


# A repeat of an interrupt within this many seconds is the same interrupt: a terminal's Ctrl-C
# reaches each worker of `--workers N` directly and again through the command that started them,
# and the second must not cut short the first one's bookkeeping (marking the trial FAIL).
REPEAT_SECONDS = 1.0


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT stop the run at once, as ``Interrupted`` / ``KeyboardInterrupt``; the
    same again within ``REPEAT_SECONDS`` is ignored, a later one interrupts again."""
    last = {"at": -REPEAT_SECONDS}

    def on_signal(signum: int, frame: object) -> None:
        now = time.monotonic()
        if now - last["at"] < REPEAT_SECONDS:
            return
        last["at"] = now
        raise Interrupted() if signum == signal.SIGTERM else KeyboardInterrupt()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
