"""deploy/slurm/search-array.sbatch on a real one-node Slurm cluster (Debian's slurm-wlm and munge,
started here): a job array whose tasks are workers of one study in the real PostgreSQL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.machine import require

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "slurm" / "search-array.sbatch"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="slurmd runs its jobs as root here: needs root")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _conf(folder: Path, host: str) -> str:
    """A one-node cluster of this machine with two GPUs (device nodes standing in for the cards)."""
    for i in range(2):
        os.mknod(folder / "dev" / f"nvidia{i}", 0o600 | 0o020000, os.makedev(1, 3))  # a character device
    (folder / "gres.conf").write_text(f"NodeName={host} Name=gpu File={folder}/dev/nvidia[0-1]\n")
    return f"""ClusterName=searchtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={folder}/munge/munge.sock
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={host} CPUs=16 RealMemory=16000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture
def cluster(tmp_path):
    """munged, slurmctld and slurmd of this test, stopped after it; yields the environment to submit with."""
    require("slurm-wlm")
    require("munge")
    folder = tmp_path / "slurm"
    for sub in ("state", "spool", "munge", "dev"):
        (folder / sub).mkdir(parents=True)
    (folder / "munge").chmod(0o700)
    host = socket.gethostname().split(".")[0]
    (folder / "slurm.conf").write_text(_conf(folder, host))
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    munge = folder / "munge"
    subprocess.run(["mungekey", "-c", "-f", "-k", munge / "munge.key"], check=True)
    subprocess.run(["munged", "--force", f"--socket={munge}/munge.sock", f"--key-file={munge}/munge.key",
                    f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
                    f"--seed-file={munge}/munged.seed"], check=True)  # fmt: skip
    pids = [munge / "munged.pid", folder / "slurmctld.pid", folder / "slurmd.pid"]
    try:
        subprocess.run(["slurmctld", "-f", folder / "slurm.conf"], env=env, check=True)
        subprocess.run(["slurmd", "-f", folder / "slurm.conf"], env=env, check=True)
        deadline = time.monotonic() + 30
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline, (folder / "slurmctld.log").read_text()[-2000:]
            time.sleep(0.5)
        yield env
    finally:
        for pid_file in reversed(pids):
            if pid_file.exists():
                subprocess.run(["kill", pid_file.read_text().strip()], check=False)


@pytest.mark.slow
def test_a_job_array_runs_the_workers_of_one_study_in_postgresql(cluster, tmp_path, postgres_url):
    url, name = postgres_url, f"slurm-{uuid.uuid4().hex[:8]}"
    env = {**cluster, "SEARCH_STORAGE": url, "SEARCH_ARTIFACTS": str(tmp_path / "artifacts"), "STUDY": "lr-sweep",
           "SEARCH": str(Path(sys.executable).parent / "search")}  # fmt: skip
    overrides = ["--set", "model.name=test_resnet", "--set", "data.image_size=16", "--set", "train.epochs=1",
                 "--set", "train.batch_size=32", "--set", f"name={name}"]  # fmt: skip
    try:
        # two tasks, one GPU each, at once: the script's own #SBATCH lines but for the array's size
        submitted = subprocess.run(
            ["sbatch", "--wait", "--array=0-1", f"--output={tmp_path}/task-%a.log", str(SCRIPT), "--n-trials", "3",
             *overrides],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        logs = "".join(p.read_text() for p in sorted(tmp_path.glob("task-*.log")))
        assert submitted.returncode == 0, submitted.stderr + logs
        study = optuna.load_study(study_name=name, storage=url)
        finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) == len(study.trials) == 3  # the study's budget, across the array: exactly
        # both tasks ran and ended well (sbatch --wait says the worst of them); the first to start may
        # have taken every trial of so short a study before the other had imported torch
        assert sorted(p.name for p in tmp_path.glob("task-*.log")) == ["task-0.log", "task-1.log"]
        assert "Traceback" not in logs and "error" not in logs.lower()
        refused = subprocess.run(["bash", str(SCRIPT)], env={**env, "SEARCH_STORAGE": "sqlite:///x.db"},
                                 capture_output=True, text=True)  # fmt: skip
        assert refused.returncode == 2 and "workers on many nodes need PostgreSQL" in refused.stderr
    finally:
        if name in optuna.get_all_study_names(url):
            optuna.delete_study(study_name=name, storage=url)
