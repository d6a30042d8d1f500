"""Opening a run: everything a worker needs before its first trial, each mistake one line before
anything trains. ``search run --workers N`` opens the run once itself, says what the data left
out, then starts its workers, which open it again (from the machine's caches) and say nothing of it."""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial

from search.console import say_data_notes
from search.record import ranked
from search.run.options import RunOptions
from search.run.outage import storage_failure
from search.run.progress import Progress
from search.store import AtomicArtifactStore, describe_db_error, load_existing, open_storage, restarting
from search.store.budget import TrialGate
from search.study.distributions import fit_space, recorded_distributions
from search.study.inputs import check_inputs, data_place, record_facts, trained_inputs
from search.study.pruners import build_pruner
from search.study.samplers import build_sampler
from search.study.schema import Study
from search.study.setup import (
    LR_RANGE_ATTR,
    QUEUED_ATTR,
    SPEC_ATTR,
    WARM_START_ATTR,
    as_new_study,
    changed_setup,
    recorded_spec,
)
from search.study.warm import Mapped, map_params
from search.study.warm import describe as describe_warm_start
from training import ConfigError, DataError, PreparedData, fetch_weights, load_source, prepare_data, resolve_device


@dataclass(frozen=True)
class OpenRun:
    """A run ready for its first trial."""

    spec: Study  # with its space as the study's earlier trials can take it
    store: AtomicArtifactStore
    study: optuna.Study
    data: PreparedData


STARTUP_WAIT = 60.0  # seconds a starting worker waits for a restarting database


def open_run(spec: Study, options: RunOptions, progress: Progress) -> OpenRun:
    """``prepare_run``, then ``check_run``: what a worker of ``search run --workers N`` does."""
    return through_restarts(lambda: check_run(prepare_run(spec, options, progress)), progress)


def open_and_say(spec: Study, options: RunOptions, progress: Progress) -> OpenRun:
    """``open_run`` for the process that opens the run for its workers (or for itself): what the
    data left out is said once, here, before the inputs check that it may explain."""
    run = through_restarts(lambda: prepare_run(spec, options, progress), progress)
    say_data_notes(run.data.notes)
    return through_restarts(lambda: check_run(run), progress)


def through_restarts(opening: Callable[[], OpenRun], progress: Progress) -> OpenRun:
    """``opening()``, done again while the database answers as a restarting server does, for up to
    ``STARTUP_WAIT``: a worker that starts during a restart waits for the server, as a running one
    does. What was opened before is not done twice (the data and weights are this process's)."""
    deadline, said = time.monotonic() + STARTUP_WAIT, False
    while True:
        try:
            return opening()
        except Exception as error:
            cause = storage_failure(error)
            if cause is None or time.monotonic() >= deadline or not restarting(error):
                raise
            if not said:
                progress.line(f"storage error while the run opens ({describe_db_error(cause)}); retrying")
                said = True
            time.sleep(1.0)


def prepare_run(spec: Study, options: RunOptions, progress: Progress) -> OpenRun:
    """The artifact folder (before the decode, so it is answered at once), the device (one this
    machine lacks), the study, read only (a space its trials cannot take, another setup than it was
    made with), the data's listing (a wrong root is answered before the hub's time-outs), the
    pretrained weights (fetched once into the machine's cache; a hub out of reach), the data (decoded
    once, into the machine's cache); only then is the study made, so a run that cannot start leaves
    nothing behind, and takes nothing from the runs that start with it."""
    store = AtomicArtifactStore(options.artifacts)
    resolve_device(spec.train.device)
    storage = open_storage(
        options.storage_url, options.heartbeat_interval, options.grace_period, STARTUP_WAIT, progress.line
    )
    spec = check_study(spec, storage)
    warm = warm_trials(spec, storage)
    try:
        dataset = load_source(spec.data)
    except DataError as error:  # named as the user set it: MASK_DATA (data.root)
        raise DataError(str(error).replace("data.root", spec.named("data.root"), 1)) from None
    fetch_weights(spec.model)
    data = prepare_data(spec.data, spec.seed, progress=progress.decode, dataset=dataset)
    found = find_lr_range(spec, progress) if spec.space.lr_to_find() is not None else None
    spec, study = create_study(spec, options, storage, found, warm, progress.line)
    return OpenRun(spec, store, study, data)


def warm_trials(spec: Study, storage: optuna.storages.BaseStorage) -> list[FrozenTrial] | None:
    """The other study's trials a warm start queues (``warm_start``), where this study has not
    queued them yet; read before anything trains, so a study that is not there is one line at once."""
    if spec.warm_start is None:
        return None
    if spec.warm_start.study == spec.name:
        raise ConfigError(f"study '{spec.name}' cannot warm-start from itself: name another study in warm_start.study")
    with contextlib.suppress(KeyError):
        if WARM_START_ATTR in optuna.load_study(study_name=spec.name, storage=storage).user_attrs:
            return None  # queued in an earlier run: the other study is not needed again
    source = load_existing(storage, spec.warm_start.study)
    best = ranked(source.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if not best:
        raise ConfigError(f"study '{source.study_name}' has no complete trial to warm-start '{spec.name}' from")
    return best[: spec.warm_start.top]


def _queue_warm_start(spec: Study, study: optuna.Study, options: RunOptions, warm: list[Mapped]) -> bool:
    """The warm start's trials queued, once in the study's life: whoever finds it not yet recorded
    queues them and records it, under the study's lock. Whether this run queued them."""
    with TrialGate.held(options.storage_url, spec.name):
        if WARM_START_ATTR in study.user_attrs:
            return False
        for mapped in warm:
            study.enqueue_trial(mapped.params)
        study.set_user_attr(WARM_START_ATTR, {"study": spec.warm_start.study, "trials": [m.number for m in warm]})
        return True


def find_lr_range(spec: Study, progress: Progress) -> dict:
    """The range test a study file asks for (``lr: {lr_find: true}``), run by the worker that finds
    the study without a recorded range: the range as the study records it."""
    from search.lr_range import find_range

    progress.line(f"lr-find: a learning-rate range test for study '{spec.name}' before its first trial")
    test = find_range(spec)
    cost = f"{test.steps} steps, {test.seconds:.0f} s"
    progress.line(f"lr-find: searching lr from {test.low:.2e} to {test.high:.2e} ({cost})")
    return {"low": test.low, "high": test.high, "steps": test.steps, "seconds": round(test.seconds, 1),
            "diverged_at": test.diverged_at}  # fmt: skip


def check_run(run: OpenRun) -> OpenRun:
    """The images and weights file are those the study was made on (``check_inputs``); the data's
    facts recorded on the study."""
    check_inputs(run.study, trained_inputs(run.data, run.spec.data, run.spec.model), data_place(run.spec.data))
    record_facts(run.study, run.data)
    return run


def check_study(spec: Study, storage: optuna.storages.BaseStorage) -> Study:
    """The spec with its space as the study's earlier trials can take it (``fit_space``), if the
    study exists and was made with this setup; read only: refused before anything is written."""
    attrs: dict = {}
    with contextlib.suppress(KeyError):  # a new study: nothing to compare with
        attrs = optuna.load_study(study_name=spec.name, storage=storage).user_attrs
    spec = with_recorded_lr_range(spec, attrs)
    space = fit_space(spec.name, recorded_distributions(storage, spec.name), spec.space)
    spec = spec.model_copy(update={"space": space})
    _same_setup(spec, attrs)
    return spec


def with_recorded_lr_range(spec: Study, attrs: dict) -> Study:
    """The spec searching the learning-rate range its study recorded, where the file asks for a
    range test (``lr_find``) and the study has one: every run and worker searches that one range."""
    recorded = attrs.get(LR_RANGE_ATTR)
    if spec.space.lr_to_find() is None or not isinstance(recorded, dict):
        return spec
    return spec.model_copy(update={"space": spec.space.with_lr_range(recorded["low"], recorded["high"])})


def create_study(
    spec: Study,
    options: RunOptions,
    storage: optuna.storages.BaseStorage,
    lr_range: dict | None = None,
    warm: list[FrozenTrial] | None = None,
    say: Callable[[str], None] = print,
) -> tuple[Study, optuna.Study]:
    """Create the study or load it by name; record its spec once (another run may have made it
    since ``check_study``: its setup is checked again); record the learning-rate range this worker
    found (``lr_range``) unless another worker's is there, and search the recorded one; queue the
    warm start's trials (``warm``) once, then the known-good configs."""
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
        if study.metric_names is None:  # the dashboard's name for the objective, not "Objective 0"
            study.set_metric_names(["macro_f1"])
    if SPEC_ATTR not in study.user_attrs:
        study.set_user_attr(SPEC_ATTR, recorded_spec(spec))
    _same_setup(spec, study.user_attrs)
    if lr_range is not None:
        spec = _record_lr_range(spec, study, options, lr_range)
    if warm:  # put onto the space as searched: with the range a range test found, if it did
        mapped = [map_params(t.number, t.params, spec.space) for t in warm]
        if _queue_warm_start(spec, study, options, mapped):
            say(describe_warm_start(spec.warm_start.study, mapped))
    moved = _queue_known_good(spec, study, options)
    if moved:
        from search.lr_range import describe_moved

        searched = spec.space.distribution("lr", {})
        say(f"lr-find: {describe_moved(moved, searched.low, searched.high)}")
    return spec, study


def _queue_known_good(spec: Study, study: optuna.Study, options: RunOptions) -> dict[float, float]:
    """The study file's known-good configurations (``enqueue``), each queued once in the study's
    life and recorded on it: a worker that joins a running study reads one attribute instead of
    every trial (a thousand workers starting read a thousand trials each), and two that start
    together do not queue one twice. The first to find one unrecorded queues it, under the lock.
    Returns the lr this worker queued moved into the recorded range, with where each trains."""
    recorded = study.user_attrs.get(QUEUED_ATTR, [])
    if all(params in recorded for params in spec.enqueue):
        return {}
    with TrialGate.held(options.storage_url, spec.name):
        queued, ran, moved = list(study.user_attrs.get(QUEUED_ATTR, [])), [], _moved_into_lr_range(spec)
        said = {}
        for params in spec.enqueue:
            inside = {**params, "lr": moved[params["lr"]]} if params.get("lr") in moved else params
            if params not in queued and inside not in ran:  # skip_if_exists: a study from before this record
                study.enqueue_trial(inside, skip_if_exists=True)
                if inside is not params:
                    said[params["lr"]] = inside["lr"]
            queued += [params] if params not in queued else []
            ran.append(inside)
        study.set_user_attr(QUEUED_ATTR, queued)  # the file's sets, as written: not moved into a range
    return said


def _moved_into_lr_range(spec: Study) -> dict[float, float]:
    """The known-good sets' lr outside a range test's range (``lr_find``), each with where it trains
    (``moved_inside``); a study file's own range refuses a set outside it when loaded. So every trial
    searches inside the range; two sets that become one are queued once."""
    from search.lr_range import moved_inside

    searched = spec.space.distribution("lr", {})  # a range test's range is the top-level lr's, in no branch
    if searched is None or searched.low is None or searched.high is None:
        return {}
    return moved_inside([q["lr"] for q in spec.enqueue if "lr" in q], searched.low, searched.high)


def _record_lr_range(spec: Study, study: optuna.Study, options: RunOptions, found: dict) -> Study:
    """The first range recorded wins: looked for and written under the study's lock, so that two
    workers that tested at once search the same range."""
    with TrialGate.held(options.storage_url, spec.name):
        if not isinstance(study.user_attrs.get(LR_RANGE_ATTR), dict):
            study.set_user_attr(LR_RANGE_ATTR, found)
    return with_recorded_lr_range(spec, study.user_attrs)


def _same_setup(spec: Study, attrs: dict) -> None:
    """Refuse a run whose setup is not the one the study recorded (its trials would not compare)."""
    recorded = attrs.get(SPEC_ATTR)
    changes = changed_setup(json.loads(recorded), spec) if recorded is not None else []
    if changes:
        then = ", ".join(f"{key}={_clipped(before)}" for key, before, _ in changes[:3])
        now = ", ".join(f"{key}={_clipped(after)}" for key, _, after in changes[:3])
        raise ConfigError(
            f"study '{spec.name}' was made with {then}; this run has {now}, and its trials would not compare "
            f"with the study's earlier ones. Put these back, run the change {as_new_study(spec.name)}"
        )


def _clipped(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
