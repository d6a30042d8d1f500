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

from search import lr_find
from search.console import say_data_notes
from search.ranking import ranked
from search.run.options import RunOptions
from search.run.outage import storage_failure
from search.run.progress import Progress
from search.store import (
    AtomicArtifactStore,
    describe_db_error,
    known_to_restart,
    load_existing,
    open_storage,
    restarting,
)
from search.store.budget import TrialGate
from search.study.distributions import fit_space, recorded_distributions
from search.study.inputs import check_inputs, data_place, record_facts, trained_inputs
from search.study.pruners import build_pruner
from search.study.recorded import QUEUED_ATTR, SPEC_ATTR, WARM_START_ATTR, as_new_study, changed_setup, recorded_spec
from search.study.samplers import build_sampler
from search.study.schema import StudySpec
from search.study.warm import Mapped, map_params
from search.study.warm import describe as describe_warm_start
from training import (
    ConfigError,
    DataError,
    PreparedData,
    check_defined,
    fetch_weights,
    load_source,
    prepare_data,
    resolve_device,
)


@dataclass(frozen=True)
class OpenRun:
    """A run ready for its first trial."""

    spec: StudySpec  # with its space as the study's earlier trials can take it
    store: AtomicArtifactStore
    study: optuna.Study
    data: PreparedData


STARTUP_WAIT = 60.0  # seconds a starting worker waits for a restarting database


def open_run(spec: StudySpec, options: RunOptions, progress: Progress) -> OpenRun:
    """``prepare_run``, then ``check_run``: what a worker of ``search run --workers N`` does. Its run
    opened the storage before starting it, so a refusal here is a restart, waited out."""
    return through_restarts(lambda: check_run(prepare_run(spec, options, progress)), progress)


def open_and_say(spec: StudySpec, options: RunOptions, progress: Progress, *, launcher: bool = False) -> OpenRun:
    """``open_run`` for the process that opens the run for its workers (``launcher``: it leaves the
    learning-rate range test to them) or for itself: what the data left out is said once, here,
    before the inputs check that it may explain. A storage that never answered (a wrong host or
    port) is one line at once; one that did is waited for."""
    url = options.storage_url
    run = through_restarts(lambda: prepare_run(spec, options, progress, opener=True, launcher=launcher), progress,
                           url)  # fmt: skip
    say_data_notes(run.data.notes)
    return through_restarts(lambda: check_run(run), progress, url)


def through_restarts(opening: Callable[[], OpenRun], progress: Progress, opener_of: str | None = None) -> OpenRun:
    """``opening()``, done again while the database answers as a restarting server does, for up to
    ``STARTUP_WAIT``: a worker that starts during a restart waits for the server, as a running one
    does; with ``opener_of`` (the storage's URL), only where it is known to restart (``known_to_restart``).
    What was opened before is not done twice (the data and weights are this process's)."""
    deadline, said = time.monotonic() + STARTUP_WAIT, False
    while True:
        try:
            return opening()
        except Exception as error:
            cause = storage_failure(error)
            never = opener_of is not None and not known_to_restart(opener_of, error)
            if cause is None or never or time.monotonic() >= deadline or not restarting(error):
                raise
            if not said:
                progress.line(f"storage error while the run opens ({describe_db_error(cause)}); retrying")
                said = True
            time.sleep(1.0)


def prepare_run(spec: StudySpec, options: RunOptions, progress: Progress, *, opener: bool = False,
                launcher: bool = False) -> OpenRun:  # fmt: skip
    """The artifact folder (before the decode, so it is answered at once), the device (one this
    machine lacks), the study, read only (a space its trials cannot take, another setup than it was
    made with), the data's listing (a wrong root is answered before the hub's time-outs), the
    pretrained weights (fetched once into the machine's cache; a hub out of reach), the data (decoded
    once, into the machine's cache); only then is the study made, so a run that cannot start leaves
    nothing behind, and takes nothing from the runs that start with it."""
    store = AtomicArtifactStore(options.artifacts)
    resolve_device(spec.train.device)
    storage = open_storage(options.storage_url, options.heartbeat_interval, options.grace_period, STARTUP_WAIT,
                           progress.line, wait_if_never_answered=not opener)  # fmt: skip
    spec = check_study(spec, storage)
    warm = warm_trials(spec, storage)
    try:
        dataset = load_source(spec.data)
    except DataError as error:  # named as the user set it: MASK_DATA (data.root)
        raise DataError(str(error).replace("data.root", spec.named("data.root"), 1)) from None
    fetch_weights(spec.model)
    data = prepare_data(spec.data, spec.seed, progress=progress.decode, dataset=dataset)
    check_defined(spec.objective, data.decoded.labels[data.val_idx], data.num_classes)
    spec, study = create_study(spec, options, storage, None, warm, progress.line, test_lr=not launcher)
    return OpenRun(spec, store, study, data)


def warm_trials(spec: StudySpec, storage: optuna.storages.BaseStorage) -> list[FrozenTrial] | None:
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


def _queue_warm_start(spec: StudySpec, study: optuna.Study, options: RunOptions, warm: list[Mapped]) -> bool:
    """The warm start's trials queued, once in the study's life: whoever finds it not yet recorded
    queues them and records it, under the study's lock. Whether this run queued them."""
    with TrialGate.held(options.storage_url, spec.name):
        if WARM_START_ATTR in study.user_attrs:
            return False
        for mapped in warm:
            study.enqueue_trial(mapped.params)
        study.set_user_attr(WARM_START_ATTR, {"study": spec.warm_start.study, "trials": [m.number for m in warm]})
        return True


def check_run(run: OpenRun) -> OpenRun:
    """The images and weights file are those the study was made on (``check_inputs``); the data's
    facts recorded on the study."""
    check_inputs(run.study, trained_inputs(run.data, run.spec.data, run.spec.model), data_place(run.spec.data))
    record_facts(run.study, run.data)
    return run


def check_study(spec: StudySpec, storage: optuna.storages.BaseStorage) -> StudySpec:
    """The spec with its space as the study's earlier trials can take it (``fit_space``), if the
    study exists and was made with this setup; read only: refused before anything is written."""
    attrs: dict = {}
    with contextlib.suppress(KeyError):  # a new study: nothing to compare with
        attrs = optuna.load_study(study_name=spec.name, storage=storage).user_attrs
    spec = lr_find.searching_recorded(spec, attrs)
    space = fit_space(spec.name, recorded_distributions(storage, spec.name), spec.space)
    spec = spec.model_copy(update={"space": space})
    _same_setup(spec, attrs)
    return spec


def create_study(
    spec: StudySpec,
    options: RunOptions,
    storage: optuna.storages.BaseStorage,
    lr_found: dict | None = None,
    warm: list[FrozenTrial] | None = None,
    say: Callable[[str], None] = print,
    *,
    test_lr: bool = False,
) -> tuple[StudySpec, optuna.Study]:
    """Create the study or load it by name; record its spec once (another run may have made it
    since ``check_study``: its setup is checked again); with ``test_lr``, the learning-rate range
    test where the study file asks for one and the study has no range (``lr_find.test_once``);
    record the range found (``lr_found``) unless another worker's is there, and search the recorded
    one; queue the warm start's trials (``warm``) once, then the known-good configs: once the range
    they move into is known."""
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
            study.set_metric_names([spec.objective])
    _same_setup(spec, study.user_attrs)
    if test_lr:
        spec = lr_find.test_once(spec, study, options.storage_url, say)
    if lr_found is not None:
        spec = lr_find.record_first(spec, study, options.storage_url, lr_found)
    if spec.space.lr_to_find() is not None:  # the range is its workers' to find: they record the setup and queue
        return spec, study
    if SPEC_ATTR not in study.user_attrs:  # once the range is known: a test that failed leaves no setup recorded
        study.set_user_attr(SPEC_ATTR, recorded_spec(spec))
        _same_setup(spec, study.user_attrs)  # another run's, recorded first
    if warm:  # put onto the space as searched: with the range lr-find found, if it did
        mapped = [map_params(t.number, t.params, spec.space) for t in warm]
        if _queue_warm_start(spec, study, options, mapped):
            say(describe_warm_start(spec.warm_start.study, mapped))
    moved = _queue_known_good(spec, study, options)
    if moved:
        searched = spec.space.distribution("lr", {})
        say(f"lr-find: {lr_find.describe_moved(moved, searched.low, searched.high)}")
    return spec, study


def _queue_known_good(spec: StudySpec, study: optuna.Study, options: RunOptions) -> dict[float, float]:
    """The study file's known-good configurations (``enqueue``), each queued once in the study's
    life and recorded on it: a worker that joins a running study reads one attribute instead of
    every trial (a thousand workers starting read a thousand trials each), and two that start
    together do not queue one twice. The first to find one unrecorded queues it, under the lock.
    Returns the lr this worker queued moved into the recorded range, with where each trains."""
    if all(params in study.user_attrs.get(QUEUED_ATTR, []) for params in spec.enqueue):
        return {}
    moves, said, trained = lr_find.queued_moves(spec), {}, []
    with TrialGate.held(options.storage_url, spec.name):
        queued = list(study.user_attrs.get(QUEUED_ATTR, []))  # the file's sets, as written: not moved
        for params in spec.enqueue:
            moved = {**params, "lr": moves[params["lr"]]} if params.get("lr") in moves else params
            if params not in queued:
                if moved not in trained:  # two sets moved onto one are queued once
                    # skip_if_exists: a 0.1 study queued its sets before this record (kept until 1.0)
                    study.enqueue_trial(moved, skip_if_exists=True)
                    said |= {params["lr"]: moved["lr"]} if moved is not params else {}
                queued.append(params)
            trained.append(moved)
        study.set_user_attr(QUEUED_ATTR, queued)
    return said


def _same_setup(spec: StudySpec, attrs: dict) -> None:
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
