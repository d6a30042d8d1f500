"""A trial's lifecycle done for real: killed and interrupted workers, NaN and failing trials, bad
weights, a restarted database, a full disk."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import TINY, search_here
from tests.warm import Launched, launch
from training.checkpoint import read_meta

FAST_HEARTBEAT = ["--heartbeat-interval", "1", "--grace-period", "3"]


RUN = ["run", "--study", "lr-sweep", *TINY, *FAST_HEARTBEAT]


def _start(home: Path, *args: str, quiet: bool = True) -> Launched:
    """A worker process, to be killed or interrupted; in a session of its own, as a command started
    from a terminal is."""
    env = {**os.environ, "SEARCH_HOME": str(home)}
    return launch(*(a for a in RUN if quiet or a != "--quiet"), *args, env=env)


def _wait_mid_training(
    url: str, process: Launched, need_finished: int, need_running: int = 1, limit: float = 120,
    name: str = "lr-sweep", need_retried: bool = False,
) -> None:  # fmt: skip
    """Until ``need_running`` trials are RUNNING with an epoch reported (so inside a later epoch)
    and, with ``need_retried``, one of them is a failed trial's retry."""
    deadline, storage = time.monotonic() + limit, None
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-2000:]
        try:  # one storage for every look: a new one each time holds a connection until it is collected
            storage = storage or optuna.storages.RDBStorage(url)
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        except (KeyError, Exception):
            trials = []
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        running = [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]
        retried = any("failed_trial" in t.system_attrs for t in running)
        if finished >= need_finished and len(running) >= need_running and (retried or not need_retried):
            return
        time.sleep(0.05)
    raise AssertionError("no trial reached mid-training in time")


@pytest.mark.slow
def test_killed_worker_trial_fails_is_retried_and_nothing_finished_is_lost(tmp_path):
    url = f"sqlite:///{tmp_path}/studies.db"
    args = ["--n-trials", "2", "--set", "train.epochs=8", "--set", "pruner={name: none}"]
    first = _start(tmp_path, *args)
    _wait_mid_training(url, first, need_finished=1)
    deadline = time.monotonic() + 60  # an epoch is reported before its checkpoint is written: wait for the file
    while not list((tmp_path / "work").rglob("*.safetensors")) and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {t.number: t for t in optuna.load_study(study_name="lr-sweep", storage=url).trials}
    killed = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    assert len(killed) == 1
    assert list((tmp_path / "work").rglob("*.safetensors"))  # the killed trial's best epoch so far

    second = search_here(*RUN, *args, env={"SEARCH_HOME": str(tmp_path)})  # the next worker
    assert second.returncode == 0, second.stderr[-2000:]
    study = optuna.load_study(study_name="lr-sweep", storage=url)
    by_number = {t.number: t for t in study.trials}
    assert by_number[killed[0]].state == TrialState.FAIL
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 2
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert not (tmp_path / "work").exists()  # the next worker removed it, and its own folder, and their parents
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed[0]]
    assert retried and retried[0].params == by_number[killed[0]].params  # the same params, run again
    reason = by_number[killed[0]].user_attrs["failure_reason"]
    worker = before[killed[0]].user_attrs["worker"]
    assert reason.startswith(f"worker {worker} stopped sending heartbeats at "), reason
    status = search_here("status", "--study", "lr-sweep", env={"SEARCH_HOME": str(tmp_path)})
    assert f"  failed: 1 x {reason}; retried as trial {retried[0].number} (trial {killed[0]})" in status.stdout
    for number, old in before.items():  # finished trials untouched, checkpoints readable
        if old.state == TrialState.COMPLETE:
            assert by_number[number].user_attrs == old.user_attrs and by_number[number].value == old.value
            stored = tmp_path / "artifacts" / old.user_attrs["checkpoint_artifact"]
            assert read_meta(stored)["metrics"]["macro_f1"] == old.value


@pytest.mark.slow
def test_stop_lets_the_running_workers_finish_their_trials_and_a_later_run_goes_on(tmp_path):
    url = f"sqlite:///{tmp_path}/studies.db"
    args = ["--n-trials", "30", "--workers", "2", "--set", "train.epochs=4", "--set", "pruner={name: none}"]
    run = _start(tmp_path, *args, quiet=False)
    _wait_mid_training(url, run, need_finished=0, need_running=2)
    stop = search_here("stop", "--study", "lr-sweep", env={"SEARCH_HOME": str(tmp_path)})
    stopped_at = time.time()
    assert stop.returncode == 0 and "finish the 2 running first" in stop.stderr, stop.stderr
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err[-2000:]
    assert err.count("was asked to stop (search stop): no new trial here") == 2, err[-2000:]
    trials = optuna.load_study(study_name="lr-sweep", storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * len(trials)  # the two finished, none failed
    assert all(t.datetime_start.timestamp() < stopped_at for t in trials)  # and none started after the stop
    assert all(t.user_attrs["epochs_run"] == 4 for t in trials)

    later = search_here(*RUN, "--n-trials", str(len(trials) + 1), "--set", "train.epochs=4",
                        "--set", "pruner={name: none}", env={"SEARCH_HOME": str(tmp_path)})  # fmt: skip
    assert later.returncode == 0, later.stderr[-2000:]
    assert len(optuna.load_study(study_name="lr-sweep", storage=url).trials) == len(trials) + 1


@pytest.mark.slow
def test_through_pgbouncer_a_killed_workers_trial_is_retried_and_stop_reaches_every_worker(
    tmp_path, postgres_url, bouncer_url
):
    """The storage path past the connection limit, end to end: workers on one PostgreSQL study
    through PgBouncer's transaction pooling (the budget's lock included), a SIGKILLed worker's trial
    failed by its missing heartbeats and retried by another worker, then ``search stop``."""
    name = f"pgb-{uuid.uuid4().hex[:8]}"
    args = ["--storage", bouncer_url, "--set", f"name={name}", "--n-trials", "30", "--set", "train.epochs=8",
            "--set", "pruner={name: none}"]  # fmt: skip
    try:
        first = _start(tmp_path, *args)
        _wait_mid_training(bouncer_url, first, need_finished=0, name=name)
        first.send_signal(signal.SIGKILL)
        first.wait()
        trials = optuna.load_study(study_name=name, storage=bouncer_url).trials
        killed = [t for t in trials if t.state == TrialState.RUNNING]
        assert len(killed) == 1

        run = _start(tmp_path, *args, "--workers", "2", quiet=False)
        _wait_mid_training(bouncer_url, run, need_finished=0, need_running=2, name=name, need_retried=True)
        stop = search_here("stop", "--study", name, "--storage", bouncer_url, env={"SEARCH_HOME": str(tmp_path)})
        stopped_at = time.time()
        assert stop.returncode == 0 and "finish the 2 running first" in stop.stderr, stop.stderr
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0, err[-2000:]
        assert err.count("was asked to stop (search stop): no new trial here") == 2, err[-2000:]

        trials = {t.number: t for t in optuna.load_study(study_name=name, storage=bouncer_url).trials}
        assert trials[killed[0].number].state == TrialState.FAIL
        reason = trials[killed[0].number].user_attrs["failure_reason"]
        assert reason.startswith(f"worker {killed[0].user_attrs['worker']} stopped sending heartbeats at "), reason
        retry = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed[0].number]
        assert len(retry) == 1 and retry[0].params == killed[0].params and retry[0].state == TrialState.COMPLETE
        others = [t for t in trials.values() if t.number != killed[0].number]
        assert [t.state for t in others] == [TrialState.COMPLETE] * len(others)  # both running trials finished
        assert all(t.datetime_start.timestamp() < stopped_at for t in others)  # and none started after the stop
    finally:
        optuna.delete_study(study_name=name, storage=postgres_url)


KNOWN_PARAMS = {"lr": 0.01, "scheduler": "cosine", "loss": "cross_entropy", "accumulation_steps": 1}
KNOWN = "{lr: 0.01, scheduler: cosine, loss: cross_entropy, accumulation_steps: 1}"


# The run after an interruption does not depend on which signal it was: it is checked once.
@pytest.mark.slow
@pytest.mark.parametrize("signum, code, run_again", [(signal.SIGTERM, 143, True), (signal.SIGINT, 130, False)])
def test_interrupted_worker_marks_its_trial_and_the_next_run_continues(tmp_path, signum, code, run_again):
    url = f"sqlite:///{tmp_path}/studies.db"
    args = ["--n-trials", "2", "--set", "train.epochs=8", "--set", "pruner={name: none}", "--set", f"enqueue=[{KNOWN}]"]
    worker = _start(tmp_path, *args)
    _wait_mid_training(url, worker, need_finished=0)
    worker.send_signal(signum)
    worker.send_signal(signum)  # at once again, as a Ctrl-C reaches a worker directly and through its parent
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == code, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err
    study = optuna.load_study(study_name="lr-sweep", storage=url)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["failure_reason"] == "interrupted"
    assert err.strip().splitlines()[-1] == (
        f"search: interrupted; trial {failed[0].number} is marked FAIL (interrupted); run again to continue"
    )
    # the interrupted trial was the study's queued known-good one: it is queued again, not skipped
    queued = [t for t in study.trials if t.state == TrialState.WAITING]
    assert failed[0].params == KNOWN_PARAMS and [t.system_attrs["fixed_params"] for t in queued] == [KNOWN_PARAMS]
    if not run_again:
        return
    again = search_here(*RUN, *args, env={"SEARCH_HOME": str(tmp_path)})
    assert again.returncode == 0, again.stderr[-2000:]
    study = optuna.load_study(study_name="lr-sweep", storage=url)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 2 and finished[0].params == KNOWN_PARAMS


def test_interrupted_before_any_trial_ran_says_that_none_was_marked(tmp_path, monkeypatch):
    def decode_interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as a Ctrl-C while the images are decoded

    monkeypatch.setattr("search.run.open.prepare_data", decode_interrupted)
    run = search_here(*RUN, "--n-trials", "1", env={"SEARCH_HOME": str(tmp_path)})
    assert run.returncode == 130
    assert run.stderr.strip().splitlines() == ["search: interrupted; no trial was running; run again to continue"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "how, code",
    [("SIGTERM to the command only, as a scheduler sends it: it passes it on", 143),
     ("Ctrl-C in a terminal: SIGINT to the whole process group, workers too", 130)],
    ids=["sigterm", "ctrl-c"],
)  # fmt: skip
def test_interrupting_a_run_of_several_workers_stops_every_worker_and_marks_their_trials(tmp_path, how, code):
    url = f"sqlite:///{tmp_path}/studies.db"
    run = _start(
        tmp_path, "--workers", "2", "--n-trials", "4", "--set", "train.epochs=8", "--set", "pruner={name: none}"
    )
    _wait_mid_training(url, run, need_finished=0, need_running=2)
    if code == 143:
        run.send_signal(signal.SIGTERM)
    else:
        os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == code, err[-2000:]
    assert "Traceback" not in err
    study = optuna.load_study(study_name="lr-sweep", storage=url)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 2 and {t.user_attrs["failure_reason"] for t in failed} == {"interrupted"}
    assert len({t.user_attrs["worker"] for t in failed}) == 2


@pytest.mark.slow
def test_nan_loss_fails_that_trial_with_reason_and_epoch_and_the_study_goes_on(tmp_path):
    run = search_here(
        "run", "--study", "lr-sweep", "--n-trials", "2", *TINY,
        "--set", "space.lr={choices: [0.003, 1.0e+30]}",
        "--set", "enqueue=[{lr: 1.0e+30, loss: cross_entropy, scheduler: cosine, accumulation_steps: 1}, "
                 "{lr: 0.003, loss: cross_entropy, scheduler: cosine, accumulation_steps: 1}]",
        "--set", "pruner={name: none}",
        env={"SEARCH_HOME": str(tmp_path)},
    )  # fmt: skip
    assert run.returncode == 0
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/studies.db")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and failed[0].number == 0 and all(t.params["lr"] == 1e30 for t in failed)
    assert "loss became nan" in failed[0].user_attrs["failure_reason"] and failed[0].user_attrs["failed_epoch"] == 0
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 2


@pytest.mark.slow
def test_a_configuration_error_inside_a_trial_stops_the_run_at_once(tmp_path):
    run = search_here(
        "run", "--study", "lr-sweep", "--n-trials", "5", *TINY,
        "--set", "train.augment.train=[{name: Resize, height: 8, width: 8}]",
        env={"SEARCH_HOME": str(tmp_path)},
    )  # fmt: skip
    assert run.returncode == 2 and "augmentation changed an image" in run.stderr
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/studies.db")
    ran = [t for t in study.trials if t.state != TrialState.WAITING]  # lr-sweep queues known-good trials
    assert len(ran) == 1 and ran[0].state == TrialState.FAIL and "augmentation" in ran[0].user_attrs["failure_reason"]


@pytest.mark.parametrize(
    "source, said",
    [("a local file that is not there", "is not a file; give the path of a weights file"),
     ("HF_HUB_OFFLINE=1, an empty cache", "lacks them and HF_HUB_OFFLINE is set; set model.weights"),
     ("a hub whose name does not resolve", "lacks them and the model hub https://hub.invalid cannot be reached ("),
     ("a hub that refuses", "lacks them and the model hub http://127.0.0.1:9 cannot be reached (Connection refused)")],
)  # fmt: skip
def test_weights_that_cannot_be_loaded_are_one_line_before_any_trial(tmp_path, monkeypatch, source, said):
    from huggingface_hub import constants

    args = ["--set", "model.pretrained=true"]
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # nothing in this Hugging Face cache
    if source.startswith("a local file"):
        args = ["--set", f"model.weights={tmp_path}/nope.safetensors"]
    elif source.startswith("HF_HUB_OFFLINE"):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import: the variable comes too late
    else:  # no name server knows it (as off the network), or a port nobody listens on
        monkeypatch.setattr(
            constants, "ENDPOINT", "https://hub.invalid" if "resolve" in source else "http://127.0.0.1:9"
        )
    started = time.monotonic()
    run = search_here("run", "--study", "lr-sweep", "--n-trials", "3", *TINY, *args, env={"SEARCH_HOME": str(tmp_path)})
    assert time.monotonic() - started < 5 + 4  # the hub's answer within 5 s, plus this run's own set-up
    assert run.returncode == 1 and run.stderr.startswith("search: error: could not load weights for test_resnet")
    assert said in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    # a run that could not start leaves no empty study behind
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path}/studies.db") == []


@pytest.mark.slow
def test_a_run_asks_the_hub_for_pretrained_weights_once_not_in_every_trial(tmp_path, hub_cache):
    args = ["--n-trials", "2", *TINY, "--set", "train.epochs=1", "--set", "model.pretrained=true"]
    run = search_here("run", "--study", "lr-sweep", *args, env={"SEARCH_HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/studies.db")
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 2
    assert hub_cache["asked"] == ["model.safetensors"]  # before the first trial; the trials read that file


def test_a_wrong_data_root_is_said_before_the_hub_is_asked_for_weights(tmp_path, hub_cache):
    """Off the network the hub's time-outs took 50 s before any word of a data root that is not there."""
    args = [*TINY, "--set", "model.pretrained=true", "--set", "data.source=folder", "--set", f"data.root={tmp_path}/no"]
    run = search_here("run", "--study", "lr-sweep", *args, env={"SEARCH_HOME": str(tmp_path)})
    assert run.returncode == 1 and run.stderr.strip().splitlines() == [
        f"search: error: image folder {tmp_path}/no does not exist or is not a folder; set data.root"
    ]
    assert hub_cache["asked"] == []


@pytest.mark.slow
def test_postgresql_restart_mid_study_costs_at_most_the_running_trial(tmp_path, postgres):
    url = postgres.url
    name = f"restart-{os.getpid()}"
    env = {**os.environ, "SEARCH_HOME": str(tmp_path), "SEARCH_STORAGE": url}
    worker = launch("run", "--study", "lr-sweep", *TINY, *FAST_HEARTBEAT, "--n-trials", "4", "--set", f"name={name}",
                    "--set", "train.epochs=8", "--set", "pruner={name: none}", env=env)  # fmt: skip
    storage = optuna.storages.RDBStorage(url)  # one for every look, not a connection each
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline and worker.poll() is None
            try:
                trials = optuna.load_study(study_name=name, storage=storage).trials
            except KeyError:
                trials = []
            if any(t.state == TrialState.COMPLETE for t in trials) and any(
                t.state == TrialState.RUNNING and t.intermediate_values for t in trials
            ):
                break
            time.sleep(0.05)
        before = {t.number: (t.value, t.user_attrs) for t in trials if t.state == TrialState.COMPLETE}
        postgres.restart("fast")  # as an operator restarts it: sessions ended, the server back
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-3000:]
        study = optuna.load_study(study_name=name, storage=url)
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 4
        for number, (value, attrs) in before.items():  # finished trials untouched
            assert study.trials[number].value == value and study.trials[number].user_attrs == attrs
        assert not [t for t in study.trials if t.state == TrialState.RUNNING]
        assert len([t for t in study.trials if t.state == TrialState.FAIL]) <= 1  # at most the running one
    finally:
        if worker.poll() is None:
            worker.kill()
        optuna.delete_study(study_name=name, storage=url)


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 KiB file system (tmpfs): writes to it fail with 'No space left on device'."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_full_disk_stops_the_run_clearly_and_records_no_truncated_checkpoint(tmp_path, tiny_disk):
    (tiny_disk / "filler").write_bytes(b"\0" * 200_000)  # leave less room than a checkpoint needs
    env = {"SEARCH_HOME": str(tmp_path), "SEARCH_ARTIFACTS": str(tiny_disk / "artifacts")}
    run = search_here("run", "--study", "lr-sweep", "--n-trials", "3", *TINY, "--set", "pruner={name: none}",
                      "--set", "model.name=resnet10t", env=env)  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "No space left on device" in run.stderr.strip().splitlines()[-1]
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/studies.db")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "No space left on device" in failed[0].user_attrs["failure_reason"]
    assert all("checkpoint_artifact" not in t.user_attrs for t in study.trials)
    assert not any(k.startswith("artifacts:") for k in failed[0].system_attrs)  # no record of a half file
    leftovers = [p for p in tiny_disk.rglob("*") if p.is_file() and p.name != "filler"]
    assert leftovers == [], leftovers  # temporary files removed


@pytest.mark.slow
def test_a_worker_whose_trials_keep_failing_stops_instead_of_burning_the_budget(tmp_path):
    run = search_here(
        "run", "--study", "lr-sweep", "--n-trials", "20", *TINY, "--set", "space.lr={choices: [1.0e+30]}",
        "--set", "enqueue=[]", env={"SEARCH_HOME": str(tmp_path)},
    )  # fmt: skip
    assert run.returncode == 1 and "5 trials in a row failed" in run.stderr and "loss became nan" in run.stderr
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/studies.db")
    assert len(study.trials) == 5 and all(t.state == TrialState.FAIL for t in study.trials)


@pytest.mark.slow
def test_out_of_memory_fails_that_trial_with_its_reason_frees_its_memory_and_the_worker_goes_on(tmp_path, monkeypatch):
    import weakref

    import torch

    import search.run.objective as objective
    from search.run.lifecycle import run_here
    from search.run.options import RunOptions
    from search.study import load_study

    real_train, tensors, alive_at_release = objective.train, [], []

    def train_out_of_memory_once(config, on_epoch_end=None):
        if not tensors:
            activations = torch.empty(1 << 20)  # what the failed step held
            config.output_dir.mkdir(parents=True)
            (config.output_dir / "best.safetensors").write_bytes(b"its best epoch so far")
            tensors.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_train(config, on_epoch_end)

    monkeypatch.setattr(objective, "train", train_out_of_memory_once)
    monkeypatch.setattr(objective, "free_device_memory", lambda: alive_at_release.append(tensors[0]() is not None))
    overrides = [*TINY[1::2], "pruner={name: none}", "name=oom"]
    options = RunOptions(storage_url=f"sqlite:///{tmp_path}/s.db", artifacts=tmp_path / "artifacts", n_trials=1,
                         timeout=None, quiet=True)  # fmt: skip
    study = run_here(load_study("lr-sweep", overrides), options)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]  # the worker went on
    reason = study.trials[0].user_attrs["failure_reason"]
    assert reason == "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert alive_at_release[0] is False  # released after the failed run's frames were gone, not before
    assert not (tmp_path / "work").exists()  # its checkpoint went with its folder


def test_the_hub_is_probed_through_the_proxy_huggingface_hub_would_use(monkeypatch):
    from training.models import _unanswered

    with socket.create_server(("127.0.0.1", 0)) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        assert _unanswered("https://hub.invalid") is None  # the proxy answers for a hub this machine cannot name
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert "https://hub.invalid cannot be reached (Connection refused)" in _unanswered("https://hub.invalid")


def test_an_interrupted_queued_trial_is_queued_again_three_times_at_most(tmp_path):
    from search.run.lifecycle import MAX_REQUEUES, queue_again

    study = optuna.create_study(study_name="q", storage=f"sqlite:///{tmp_path}/studies.db", direction="maximize")
    study.enqueue_trial(KNOWN_PARAMS)
    tried = []
    while any(t.state == TrialState.WAITING for t in study.trials):
        trial = study.ask()
        tried.append(trial.suggest_float("lr", 1e-5, 1.0, log=True))  # the queued trial's own learning rate
        study.tell(trial, state=TrialState.FAIL)
        queue_again(study, trial)
    assert tried == [KNOWN_PARAMS["lr"]] * (1 + MAX_REQUEUES)
    assert study.trials[-1].system_attrs["retry_history"] == [0, 1, 2]


@pytest.mark.slow
def test_weights_in_the_cache_are_read_at_once_where_the_hub_does_not_answer(tmp_path, hub_cache, monkeypatch):
    """Not offline by the variable, but off the network: the cached file, without the hub's retries."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")
    args = ["--n-trials", "1", *TINY, "--set", "train.epochs=1", "--set", "model.pretrained=true"]
    run = search_here("run", "--study", "lr-sweep", *args, env={"SEARCH_HOME": str(tmp_path)})
    assert run.returncode == 0 and "Retrying" not in run.stderr, run.stderr
    assert hub_cache["asked"] == []  # timm read the cached file: nothing was asked of the hub


def test_a_trial_made_after_the_budgets_lock_was_lost_past_the_budget_is_failed_saying_why(tmp_path):
    from search.run.lifecycle import LOST_LOCK, ask
    from search.store import open_storage

    class LostGate:
        def still_held(self) -> bool:
            return False

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert ask(study, LostGate(), n_trials=3) is not None  # 2 finished + this one: within the budget
    assert ask(study, LostGate(), n_trials=3) is None  # one more would pass it: failed, saying why
    last = study.trials[-1]
    assert last.state == TrialState.FAIL and last.user_attrs["failure_reason"] == LOST_LOCK


@pytest.mark.slow
def test_a_lost_trial_fails_saying_why_is_queued_again_and_its_files_go(tmp_path):
    """A trial the database took down, and one whose worker stopped after storing its checkpoint
    and while writing another file: each fails once, saying why, its params queued again without
    its files, and its checkpoint and half-written file are gone (a failed trial is never ranked)."""
    from search.run.lifecycle import fail_lost_trial, fail_stale_trials
    from search.store import AtomicArtifactStore, open_storage
    from search.store.artifacts import upload_to_trial

    store = AtomicArtifactStore(tmp_path / "artifacts")
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    lost, stopped = study.ask(), study.ask()
    for trial in (lost, stopped):
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    (tmp_path / "best.safetensors").write_bytes(b"weights")
    upload_to_trial(store, tmp_path / "best.safetensors", stopped)
    stopped.set_user_attr("worker", "gpu-7:4121")
    (store.base_path / ".x~gpu-7~4121~ab").write_bytes(b"half")
    storage.record_heartbeat(stopped._trial_id)

    for _ in range(2):  # the second time, it is failed already: nothing more
        fail_lost_trial(study, lost, "the database went away during the trial (server closed the connection)", store)
    time.sleep(2.5)
    fail_stale_trials(study, store)

    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "WAITING", "WAITING"]
    assert trials[0].user_attrs == {
        "failure_reason": "the database went away during the trial (server closed the connection)"
    }
    assert trials[1].user_attrs["failure_reason"].startswith("worker gpu-7:4121 stopped sending heartbeats at ")
    assert [(t.params, t.system_attrs["failed_trial"]) for t in trials[2:]] == [
        (trials[0].params, 0),
        (trials[1].params, 1),
    ]
    assert optuna.artifacts.get_all_artifact_meta(trials[3], storage=storage) == []
    assert list(store.base_path.iterdir()) == []


def test_a_trial_another_worker_failed_meanwhile_ends_its_run_without_stopping_the_worker(tmp_path):
    """After a database outage longer than the grace period, another worker fails a trial whose
    worker is alive (its heartbeats could not reach the database): that worker's report, failure
    record and tell meet a finished trial; it keeps the trial as it is and goes on."""
    from search.record import failure_attrs, write_failure
    from search.run.lifecycle import run_trial
    from search.run.objective import Outcome
    from search.store import fail_and_retry, open_storage

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"), study_name="s")
    trial = study.ask()

    def objective(running):
        fail_and_retry(study, running._trial_id, lambda _: failure_attrs("failed by another worker"))
        write_failure(running, "its own reason")  # a finished trial's attributes: not written, no error
        return Outcome(TrialState.COMPLETE, 0.5)

    gate = type("Gate", (), {"release": lambda self: None})()
    done = run_trial(study, trial, objective, gate)
    assert (done.state, done.user_attrs) == (TrialState.FAIL, {"failure_reason": "failed by another worker"})
