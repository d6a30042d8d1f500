"""`search run --workers N` / `--trials-per-gpu K`: worker processes on one study, each given its
GPU and its part of the machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.study import load_study
from tests.conftest import TINY, search, search_here, write_image
from training.data import prepare


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["writable", "read-only"])
def test_two_workers_share_one_sqlite_file(cache, tmp_path, folder_dataset):
    broken = folder_dataset / "cat" / "broken.jpg"
    broken.write_bytes(b"not an image")  # logged as skipped by the run, which decodes for its workers
    env = {"SEARCH_HOME": str(tmp_path)}
    if cache == "read-only":  # the run decodes into a temporary folder of its own, and its workers map that
        (tmp_path / "home").write_text("a file where a folder should be")
        (tmp_path / "tmp").mkdir()
        env |= {"SEARCH_CACHE_DIR": str(tmp_path / "home" / "cache"), "TMPDIR": str(tmp_path / "tmp")}
    verbose = [arg for arg in TINY if arg != "--quiet"]
    data = f"data={{source: folder, root: {folder_dataset}, image_size: 16}}"
    # a class of one image, on the training side by the seed: warned of by the run, not by each worker
    write_image(folder_dataset / "owl" / "0.png", np.random.default_rng(3), (200, 200, 200))
    config = load_study("lr-sweep", [data]).data.model_copy(update={"cache_dir": tmp_path / "probe"})
    seed = next(s for s in range(20) if 3 not in (d := prepare.prepare_data(config, s)).decoded.labels[d.val_idx])
    args = ["--n-trials", "4", "--workers", "2", *verbose, "--set", data, "--set", f"seed={seed}"]
    run = search("run", "--study", "lr-sweep", *args, env=env)
    assert "database is locked" not in run.stderr
    study = optuna.load_study(study_name="lr-sweep", storage=f"sqlite:///{tmp_path}/studies.db")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4 and len(study.trials) == 4
    # each worker's progress and log lines say which worker printed them; the warning is printed once
    lines = (run.stdout + run.stderr).splitlines()
    for index in (0, 1):
        assert any(line.startswith(f"[worker {index}] trial ") for line in lines), lines
    assert sum("share one SQLite file" in line for line in lines) == 1
    assert run.stderr.strip().splitlines()[-1].startswith("best trial ")  # the run's last word, after its workers
    skipped = [line for line in lines if f"skipping unreadable image {broken}" in line]
    assert skipped == [f"search: skipping unreadable image {broken}"], skipped  # decoded once, before the workers
    unvalidated = [line for line in lines if "the validation split has no image of 1 of 4 classes: 'owl'" in line]
    assert len(unvalidated) == 1 and unvalidated[0].startswith("search: "), unvalidated  # said by the run only
    if cache == "read-only":
        assert sum("cannot write the cache folder" in line for line in lines) == 1, lines
        assert (tmp_path / "tmp" / f"search-cache-{os.getuid()}" / "decoded").is_dir()


@pytest.mark.slow
def test_eight_workers_share_one_study_on_postgresql_through_pgbouncer(tmp_path, postgres_url, bouncer_url):
    url = bouncer_url  # transaction pooling: the budget's lock and heartbeats go through it too
    name = f"pg-{uuid.uuid4().hex[:8]}"
    env = {"SEARCH_HOME": str(tmp_path), "SEARCH_STORAGE": url}
    try:
        run = search("run", "--study", "lr-sweep", "--n-trials", "16", "--workers", "8", *TINY,
                     "--set", f"name={name}", "--set", "train.epochs=1", env=env)  # fmt: skip
        assert "Error" not in run.stderr and "error" not in run.stderr.lower()
        study = optuna.load_study(study_name=name, storage=url)
        finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) == 16 and len(study.trials) == 16
        assert sorted(t.number for t in study.trials) == list(range(16))  # no duplicates, no surplus
        assert len({t.user_attrs["worker"] for t in study.trials}) >= 4  # the trials really were shared
        assert len({t.user_attrs.get("seed") for t in finished}) == 1
    finally:
        optuna.delete_study(study_name=name, storage=postgres_url)


def test_packing_without_mps_is_answered_with_what_it_costs(tmp_path, monkeypatch):
    from search.run.mps import mps_running, packing_warning

    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert not mps_running()
    os.mkfifo(tmp_path / "control")  # what a running nvidia-cuda-mps-control -d leaves there
    assert mps_running()
    warning = packing_warning(2, gpus=1, mps=False)
    assert warning and "Add --mps" in warning and "--trials-per-gpu 1" in warning
    assert packing_warning(2, gpus=1, mps=True) is None  # under MPS their kernels run at once
    assert packing_warning(1, gpus=1, mps=False) is None and packing_warning(2, gpus=0, mps=False) is None


def test_each_gpu_gets_its_share_of_the_workers(monkeypatch):
    from search.run.gpus import sharing, worker_environments, worker_gpus

    # --trials-per-gpu 2 on a 4-GPU machine: 8 workers, two on every GPU, none without one.
    envs = worker_environments(8, worker_gpus("auto", 4))
    assert sorted(env["CUDA_VISIBLE_DEVICES"] for env in envs) == ["0", "0", "1", "1", "2", "2", "3", "3"]
    assert all(set(env) <= {"CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS"} for env in envs)  # no storage URL in it
    assert worker_gpus("cuda", 4) == ["0", "1", "2", "3"] and worker_gpus("cuda:2", 4) == ["2"]  # the one it names
    # A container or a Slurm job that was given GPUs 2 and 5 hands out only those.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    given = worker_environments(4, worker_gpus("auto", 2))
    assert [env["CUDA_VISIBLE_DEVICES"] for env in given] == ["2", "5", "2", "5"]
    assert worker_gpus("cuda:1", 2) == ["5"]  # torch's cuda:1 there
    assert worker_gpus("cpu", 2) == [] and worker_gpus("auto", 0) == []
    assert "CUDA_VISIBLE_DEVICES" not in worker_environments(2, worker_gpus("auto", 0))[0]  # CPU workers
    # Each worker knows how many share its GPU (3 workers on 2 GPUs: two on the first, one alone).
    assert sharing(8, ["0", "1", "2", "3"]) == [2] * 8
    assert sharing(3, ["0", "1"]) == [2, 1, 2]
    assert sharing(2, []) == [1, 1]


def _run_started(monkeypatch, *args: str) -> list:
    """``search run`` with ``args`` up to where it starts its workers: what each would be given."""
    import search.run.open
    import search.run.workers

    started = []
    monkeypatch.setattr(search.run.workers, "start_worker_server", lambda: None)
    monkeypatch.setattr(search.run.open, "open_and_say", lambda spec, options, progress, launcher: _OpenedNothing())
    monkeypatch.setattr(search.run.workers, "start_workers", lambda plan: started.extend(plan) or 0)
    assert search_here("run", "--study", "lr-sweep", *args).returncode == 0
    return started


def test_workers_of_a_study_on_one_named_gpu_all_train_there(tmp_path, monkeypatch):
    """``train.device: cuda:1`` with --workers: each worker sees only that GPU, as its cuda."""

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("SEARCH_HOME", str(tmp_path))
    started = _run_started(monkeypatch, "--trials-per-gpu", "2", "--set", "train.device=cuda:1")
    assert [env["CUDA_VISIBLE_DEVICES"] for _, _, env in started] == ["1", "1"]
    assert [spec.train.device for spec, _, _ in started] == ["cuda", "cuda"]  # the last word on the device
    assert [options.worker_index for _, options, _ in started] == [0, 1] and started[0][1].workers == 2


def test_workers_sharing_a_gpu_split_the_share_their_images_may_take_there(tmp_path, monkeypatch):
    """Packed workers decide at once, each seeing the GPU empty: each gets its part of the share."""

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("SEARCH_HOME", str(tmp_path))
    started = _run_started(monkeypatch, "--workers", "8", *TINY)  # 4 workers on each of the 2 GPUs
    assert [spec.train.gpu_images_share for spec, _, _ in started] == [0.125] * 8
    assert started[0][0].trial_config({}, None).gpu_images_share == 0.125
    alone = _run_started(monkeypatch, "--workers", "2", *TINY)  # one on each GPU: as written
    assert [spec.train.gpu_images_share for spec, _, _ in alone] == [0.5, 0.5]


class _OpenedNothing:
    study = type("NoStudy", (), {"get_trials": lambda self, deepcopy: []})()


def _descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found += (kids := children.get(todo.pop(), []))
        todo += kids
    return found


@pytest.mark.slow
def test_the_storage_password_is_in_no_workers_command_line_or_environment(tmp_path, postgres_url):
    """The workers get the storage as an object over the fork server's socket: not in their argv,
    not in their environment (nor in the fork server's), though the user gave it in SEARCH_STORAGE."""
    url = postgres_url.replace("://postgres@", "://postgres:s3cret-pw@")  # trust auth: any password passes
    name = f"pw-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "SEARCH_HOME": str(tmp_path), "SEARCH_STORAGE": url}
    command = [sys.executable, "-m", "search", "run", "--study", "lr-sweep", "--n-trials", "2", "--workers", "2",
               *TINY, "--set", f"name={name}", "--set", "train.epochs=2"]  # fmt: skip
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, seen = time.monotonic() + 120, []
        while time.monotonic() < deadline and run.poll() is None:
            trials = optuna.get_all_study_summaries(postgres_url)
            if any(s.study_name == name and s.n_trials for s in trials):
                seen = [(pid, Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes())
                        for pid in _descendants(run.pid) if Path(f"/proc/{pid}").exists()]  # fmt: skip
                if len(seen) >= 3:  # the fork server and two workers
                    break
            time.sleep(0.2)
        assert len(seen) >= 3, run.communicate(timeout=60)[1][-2000:]
        assert [pid for pid, text in seen if b"s3cret-pw" in text] == []
        _, err = run.communicate(timeout=180)
        assert run.returncode == 0 and "s3cret-pw" not in err, err[-2000:]
    finally:
        if run.poll() is None:
            run.kill()
        optuna.delete_study(study_name=name, storage=postgres_url)
