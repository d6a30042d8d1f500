"""``search run --trials-per-gpu K --mps``: the run's own CUDA MPS daemon, around its workers.

There is no GPU here, so ``nvidia-cuda-mps-control`` is a stand-in that speaks its protocol
(conftest's ``mps_control``). ``tests/training/test_cuda.py`` starts the real one.
"""

from __future__ import annotations

import os

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.run.gpus import sharing, worker_environments
from search.run.mps import mps_daemon
from tests.conftest import BROKEN_MPS_CONTROL, install_mps_control, search_here
from training.errors import SearchServiceError


def test_daemon_of_its_own_is_up_while_the_block_runs_and_quits_after(mps_control):
    with mps_daemon() as env:
        pipe = env["CUDA_MPS_PIPE_DIRECTORY"]
        assert os.path.exists(f"{pipe}/control") and os.path.isdir(env["CUDA_MPS_LOG_DIRECTORY"])
        assert not pipe.startswith(os.environ["CUDA_MPS_PIPE_DIRECTORY"])  # its own folder, not the default
        started = mps_control.read_text().splitlines()
        assert len(started) == 1 and started[0].startswith("start ") and f"pipe={pipe} " in started[0]
    lines = mps_control.read_text().splitlines()
    assert lines[-1].startswith("quit ")  # told to quit, through its pipe
    assert not os.path.exists(os.path.dirname(pipe))  # and its folder is gone


def test_daemon_quits_when_the_workers_fail(mps_control):
    with pytest.raises(RuntimeError, match="a worker failed"), mps_daemon() as env:
        pipe = env["CUDA_MPS_PIPE_DIRECTORY"]
        raise RuntimeError("a worker failed")
    assert mps_control.read_text().splitlines()[-1].startswith("quit ") and not os.path.exists(pipe)


def test_a_running_daemon_is_used_as_it_is(mps_control, tmp_path, monkeypatch):
    running = tmp_path / "running"
    running.mkdir()
    os.mkfifo(running / "control")
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(running))
    with mps_daemon() as env:
        assert env is None
    assert not mps_control.exists()  # nothing started, nothing told to quit
    assert (running / "control").exists()


def test_no_control_program_or_one_that_fails_is_one_line_saying_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "no-daemon-here"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with (
        pytest.raises(SearchServiceError, match="nvidia-cuda-mps-control is not on PATH.*run without --mps"),
        mps_daemon(),
    ):
        pass
    install_mps_control(tmp_path / "bin", BROKEN_MPS_CONTROL)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin")
    before = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))
    with pytest.raises(SearchServiceError) as error, mps_daemon():
        pass
    message = str(error.value)
    assert "did not start (exit status 1): CUDA driver version is insufficient" in message
    assert "\n" not in message and "run without --mps" in message
    left = {name for name in set(os.listdir(os.environ.get("TMPDIR", "/tmp"))) - before if "search-mps-" in name}
    assert not left  # its temporary folder is removed on failure too


def test_workers_under_the_daemon_name_their_gpu_as_its_server_numbers_them():
    # This run was given GPUs 2 and 5; the daemon started with them numbers them 0 and 1 for its clients.
    mps = {"CUDA_MPS_PIPE_DIRECTORY": "/tmp/search-mps-x/pipe", "CUDA_MPS_LOG_DIRECTORY": "/tmp/search-mps-x/log"}
    envs = worker_environments(4, ["2", "5"], mps)
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["0", "1", "0", "1"]
    assert all(env["CUDA_MPS_PIPE_DIRECTORY"] == mps["CUDA_MPS_PIPE_DIRECTORY"] for env in envs)
    assert sharing(4, ["2", "5"]) == [2, 2, 2, 2]
    # without a daemon of its own (none, or one the machine runs), the GPUs keep their own names
    assert [env["CUDA_VISIBLE_DEVICES"] for env in worker_environments(2, ["2", "5"])] == ["2", "5"]
    assert "CUDA_MPS_PIPE_DIRECTORY" not in worker_environments(2, ["2", "5"])[0]


@pytest.mark.slow
def test_search_run_packs_its_trials_under_a_daemon_started_before_and_stopped_after(
    mps_control, tmp_path, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # as on a one-GPU machine (the workers train on CPU)
    tiny = ["--set", "model.name=test_resnet", "--set", "data.image_size=16", "--set", "train.epochs=1"]
    run = search_here(
        "run", "--study", "lr-sweep", "--n-trials", "2", "--trials-per-gpu", "2", "--mps", *tiny, "--quiet",
        env={"SEARCH_HOME": str(tmp_path)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "take turns" not in run.stderr  # the packing warning is for packing without MPS
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/studies.db")
    assert len(study.trials) == 2 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    lines = mps_control.read_text().splitlines()
    started, quit = float(lines[0].split()[1]), float(lines[-1].split()[1])
    assert lines[0].startswith("start ") and "visible=unset" in lines[0] and lines[-1].startswith("quit ")
    assert started < min(t.datetime_start.timestamp() for t in study.trials)
    assert quit > max(t.datetime_complete.timestamp() for t in study.trials)


@pytest.mark.parametrize(
    "gpus, args, daemon",
    [
        (1, ["--trials-per-gpu", "2", "--mps"], True),
        (1, ["--workers", "2", "--mps"], True),  # two workers on one GPU are packed too
        (2, ["--workers", "2", "--mps"], False),  # one worker on each GPU: nothing to share
        (1, ["--trials-per-gpu", "1", "--mps"], False),
        (0, ["--workers", "2", "--mps"], False),  # CPU workers
        (1, ["--trials-per-gpu", "2"], False),  # packed without --mps: only the warning
        (1, ["--workers", "2"], False),  # the same
    ],
)
def test_the_daemon_is_started_where_a_gpu_gets_several_workers_and_mps_is_asked_for(
    mps_control, tmp_path, monkeypatch, gpus, args, daemon
):
    import search.run.workers

    seen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(search.run.workers, "start_workers", lambda plan: seen.append(plan) or 0)
    run = search_here("run", "--study", "lr-sweep", *args, env={"SEARCH_HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    assert len(seen) == 1 and all(("CUDA_MPS_PIPE_DIRECTORY" in env) == daemon for _, _, env in seen[0])
    assert mps_control.exists() == daemon
    packed_without_mps = args in (["--trials-per-gpu", "2"], ["--workers", "2"])
    assert ("2 trials per GPU take turns on it" in run.stderr) == packed_without_mps
