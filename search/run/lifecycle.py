"""A worker's trials, one after another: ``run_trials`` owns the whole lifecycle of a trial.

``n_trials`` is a budget for the whole study, whoever runs it: a worker starts a trial only while
finished and running trials are below it, deciding under a lock shared by all workers
(``TrialGate``). A killed worker's trial stops sending heartbeats, turns FAIL when the next worker
looks and is queued again, so the study still ends with exactly ``n_trials`` finished.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections import Counter
from collections.abc import Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from search import record
from search.confirm import described, queue_confirmations
from search.run.heartbeat import heartbeat
from search.run.objective import Objective
from search.run.open import OpenRun, open_and_say
from search.run.options import RunOptions
from search.run.outage import StorageOutage, storage_failure
from search.run.progress import Progress
from search.run.retention import keep_top_checkpoints
from search.run.scratch import scratch_folder
from search.store import (
    CONFIRMS,
    STORAGE_ERRORS,
    AtomicArtifactStore,
    artifact_ids,
    ask_confirmation,
    describe_db_error,
    fail_and_retry,
    finished_after_trial,
    redact,
    stop_requests,
    trial_counts,
    trial_id,
)
from search.store import ask as new_or_queued_trial
from search.store import fail_stale_trials as fail_stale
from search.store.artifacts import remove, remove_temporaries, settle_unsure
from search.store.budget import Next, TrialGate, next_step
from search.study.schema import StudySpec
from training import SearchServiceError, pause_point

POLL_SECONDS = 2.0
MAX_FAILURES_IN_A_ROW = 5


def run_here(spec: StudySpec, options: RunOptions) -> optuna.Study:
    """``search run`` in this process: open the run, say what its data left out, run its trials."""
    progress = Progress(quiet=options.quiet)
    return work(open_and_say(spec, options, progress), options, progress)


def work(run: OpenRun, options: RunOptions, progress: Progress) -> optuna.Study:
    """Trials of an opened run until the budget, the timeout or a stop ends them; the notes of its
    last trials are in the dashboard before it returns."""
    if options.worker_index == 0:  # after the data loaded: a bad data root is the only line printed
        progress.line(f"study '{run.spec.name}' on {redact(options.storage_url)}, {options.n_trials} trials")
    gate = TrialGate(options.storage_url, run.spec.name)
    remove_temporaries(run.store)  # what this machine's killed workers left half written
    try:
        with scratch_folder(options.artifacts.parent / "work" / run.spec.name) as work_dir:
            objective = Objective(run.spec, run.store, work_dir, progress)
            run_trials(run.study, objective, gate, options, progress)
            objective.pictures.wait()
            settle_unsure(run.store)  # a picture's record the last outage hid
    finally:
        gate.close()  # its connection, kept for the trial starts
    return run.study


def run_trials(study: optuna.Study, objective: Objective, gate: TrialGate, options: RunOptions,
               progress: Progress) -> None:  # fmt: skip
    """One trial after another, while the study wants more, the timeout has not passed and nobody
    asked the study to stop since this worker started."""
    deadline = time.monotonic() + options.timeout if options.timeout else None
    stops, outage, failures, started = None, StorageOutage(progress), FailureStreak(), 0
    lost: tuple[optuna.Trial, str] | None = None  # the trial the database went away under, and why
    while deadline is None or time.monotonic() < deadline:
        running = None
        try:
            # deciding on the budget and asking for the trial: one step for the whole study
            if not gate.acquire(waiting_ends(study, deadline, stops)):  # the timeout, or a stop, while waiting
                if deadline is None or time.monotonic() < deadline:
                    progress.line(ASKED_TO_STOP.format(study.study_name))
                return
            stops = stop_requests(study) if stops is None else stops  # those before this worker started
            lost = after_outage(study, lost, objective.store)  # the database answers: what it took down, settled
            if stop_requests(study) > stops:
                progress.line(ASKED_TO_STOP.format(study.study_name))
                return
            fail_stale_trials(study, objective.store)  # a killed worker's trial turns FAIL, its params queued again
            counts = trial_counts(study)
            step = next_step(counts, options.n_trials)
            if step is Next.DONE and confirm_leaders(study, objective.spec, progress):
                continue  # the study file's confirmation runs, queued now: counted again
            if step is Next.DONE:
                if not started and options.worker_index == 0:
                    progress.line(nothing_to_run(counts, options.n_trials))
                return
            if step is Next.WAIT:  # the rest is running: wait in case one of them fails
                gate.release()
                time.sleep(POLL_SECONDS)
                continue
            pause_point("budget")
            if step is Next.CONFIRM:
                trial = ask_confirmation(study)  # outside the budget
            else:
                trial = ask(study, gate, options.n_trials)
            if trial is None:
                continue
            started, running = started + 1, trial
            done = run_trial(study, trial, objective, gate)
            running = None
            failures.count(done)
            after_trial(study, done, objective, options, progress)
            outage.over()
        except Exception as error:
            if (cause := storage_failure(error)) is None:
                raise
            if running is not None:
                said = describe_db_error(cause).strip("() ")
                lost = (running, "the database went away during the trial" + (f" ({said})" if said else ""))
            outage.wait(cause)
        finally:
            gate.release()


def after_trial(study: optuna.Study, done: FrozenTrial, objective: Objective, options: RunOptions,
                progress: Progress) -> None:  # fmt: skip
    """Once a trial is told: checkpoint retention, a failure said, the study's line."""
    trials = finished_after_trial(study)  # only those this worker has not read yet; its next trial's too
    if done.state == TrialState.COMPLETE:
        keep_top_checkpoints(trials, objective.store, objective.spec.checkpoints.keep_top_k)
    if done.state == TrialState.FAIL:
        progress.line(f"trial {done.number} failed: {record.TrialRecord.of(done).failure_reason or 'see log'}")
    progress.study(study.study_name, trials, options.n_trials, objective.spec.objective)


def nothing_to_run(counts: Counter, n_trials: int) -> str:
    return (f"the study has {counts['COMPLETE'] + counts['PRUNED']} finished trials of the {n_trials} asked for: "
            "nothing to run (a larger --n-trials or budget.n_trials goes on)")  # fmt: skip


def confirm_leaders(study: optuna.Study, spec: StudySpec, progress: Progress) -> bool:
    """Whether the study file's ``confirm`` queued confirmation runs now, the search's budget spent
    (under the budget's lock: one worker queues each): until the leading configurations all have them."""
    if spec.confirm is None:
        return False
    queued = queue_confirmations(study, spec.confirm.top, spec.confirm.seeds)
    if queued:
        progress.line(f"the search's budget is spent: confirming the leaders, outside it: {described(queued)}")
    return bool(queued)


ASKED_TO_STOP = "study '{}' was asked to stop (search stop): no new trial here"
STOP_LOOK = 5.0  # seconds between a waiting worker's looks for a stop request (each a query)


def waiting_ends(study: optuna.Study, deadline: float | None, stops: int | None) -> Callable[[], bool]:
    """For a worker waiting for the budget's lock: whether to stop waiting, once its ``deadline``
    passed or a stop was asked since the ``stops`` it found (looked for every ``STOP_LOOK`` s)."""
    looked = time.monotonic()

    def ends() -> bool:
        nonlocal looked
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return True
        if stops is None or now - looked < STOP_LOOK:
            return False
        looked = now
        return stop_requests(study) > stops

    return ends


LOST_LOCK = "made while the budget's lock was lost (its connection ended), past the study's n_trials"


def ask(study: optuna.Study, gate: TrialGate, n_trials: int) -> optuna.Trial | None:
    """The next trial: a queued one first (taken atomically), else a new one the sampler fills.
    None where the budget's lock was lost while it was made and the study has its trials without
    it: that trial is told FAIL, saying so, and its queued params are queued again."""
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for study.optimize: ``run_trial`` sends them itself.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        trial = new_or_queued_trial(study)
    if gate.still_held():
        return trial
    counts = trial_counts(study)
    if counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"] <= n_trials:
        return trial
    record.write_failure(trial, LOST_LOCK)
    study.tell(trial, state=TrialState.FAIL)
    queue_again(study, trial)
    return None


def run_trial(study: optuna.Study, trial: optuna.Trial, objective: Objective, gate: TrialGate) -> FrozenTrial:
    """The objective on an asked trial, under its heartbeat, and its outcome told; a trial the worker
    stops on (an interrupt, a wrong study, a full disk) is told FAIL before the worker goes. The
    budget's lock is released in here: an interrupt while that happens marks the trial too."""
    with heartbeat(trial.storage, trial_id(trial)):
        try:
            gate.release()  # the trial exists: other workers may start theirs
            outcome = objective(trial)
            pause_point("tell")
        except BaseException as error:
            interrupted = isinstance(error, KeyboardInterrupt) and getattr(error, "trial", None) is None
            if interrupted:
                record.write_failure(trial, "interrupted")
                error.trial = trial.number  # for the command's last line
            with contextlib.suppress(*STORAGE_ERRORS, UpdateFinishedTrialError):
                study.tell(trial, state=TrialState.FAIL)
                if interrupted:
                    queue_again(study, trial)
            raise
    # A trial another worker failed meanwhile (its heartbeats stopped reaching the database) stays as it is.
    return study.tell(trial, outcome.value, outcome.state, skip_if_finished=True)


MAX_REQUEUES = 3  # as many times as a killed worker's trial is retried


def queue_again(study: optuna.Study, trial: optuna.Trial) -> None:
    """An interrupted trial that came from the queue (a study's known-good ``enqueue``) is queued
    again with the same params, as a killed worker's trial is, up to ``MAX_REQUEUES`` times: the
    next run tries it. Its retries are recorded as Optuna records a failed trial's (``retry_history``)."""
    attrs = trial.storage.get_trial_system_attrs(trial_id(trial))
    history = [*attrs.get("retry_history", []), trial.number]
    if attrs.get("fixed_params") and len(history) <= MAX_REQUEUES:
        retry = {"fixed_params": attrs["fixed_params"], "failed_trial": history[0], "retry_history": history}
        retry |= {CONFIRMS: attrs[CONFIRMS]} if CONFIRMS in attrs else {}  # a confirmation run's is one still
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=retry))


def fail_stale_trials(study: optuna.Study, store: AtomicArtifactStore) -> None:
    """The running trials without a heartbeat for the grace period turn FAIL, each saying which
    worker stopped and when, and are queued again (what ``study.optimize`` does before each trial)."""
    for failed in fail_stale(study, record.stopped_worker):
        remove_trial_files(study, failed, store)


def after_outage(study: optuna.Study, lost: tuple[optuna.Trial, str] | None, store: AtomicArtifactStore) -> None:
    """Once the database answers again: the trial it took down (``lost``, with why) fails, saying
    so, and is retried; the files whose record's fate it hid are removed where no record names them."""
    if lost is not None:
        fail_lost_trial(study, *lost, store)
    settle_unsure(store)


def fail_lost_trial(study: optuna.Study, trial: optuna.Trial, reason: str, store: AtomicArtifactStore) -> None:
    """A trial whose run the database took down turns FAIL, saying so, and is queued again, unless
    another worker already failed it (its heartbeats stopped while the database was away)."""
    failed = fail_and_retry(study, trial_id(trial), lambda _: record.failure_attrs(reason))
    if failed is not None:
        remove_trial_files(study, failed, store)


def remove_trial_files(study: optuna.Study, failed: FrozenTrial, store: AtomicArtifactStore) -> None:
    """A lost trial's checkpoint, if it stored one before its worker stopped (a failed trial is
    never ranked, so retention would keep it for ever), and the files its worker left half written."""
    for artifact_id in artifact_ids(study, failed):
        remove(store, artifact_id)
    if worker := record.TrialRecord.of(failed).worker:
        remove_temporaries(store, worker)


class FailureStreak:
    """Stops the worker when its trials keep failing: a broken setup must not burn the whole budget."""

    def __init__(self) -> None:
        self.in_a_row = 0

    def count(self, trial: FrozenTrial) -> None:
        self.in_a_row = self.in_a_row + 1 if trial.state == TrialState.FAIL else 0
        if self.in_a_row >= MAX_FAILURES_IN_A_ROW:
            reason = record.TrialRecord.of(trial).failure_reason or "see the log"
            raise SearchServiceError(
                f"{self.in_a_row} trials in a row failed on this worker, the last with: {reason}; "
                "fix the cause and run again to continue"
            )
