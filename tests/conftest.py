"""Shared fixtures: small real image files on disk, tiny timm models, real storages. What the suite
needs of the machine (Debian's programs, a PostgreSQL server of its own) is ``machine.py``'s."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.machine import install_missing, require
from tests.warm import launch, stop_all
from training import TrainConfig
from training.per_process import forget_all

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from pgbouncer_here import pgbouncer  # noqa: E402
from postgres_here import PostgresHere, postgres_here  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    # One thread per test process, and per process a test starts: the suite runs one test process
    # per core (pyproject.toml), and more threads than cores spin against each other. Set before
    # the first test module imports torch.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Debian's programs the tests start, installed where missing (``machine.install_missing``), by
    the run that starts the test processes, before it starts them."""
    if hasattr(session.config, "workerinput"):  # a test process of the run: its starter did it
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    install_missing(reporter.write_line if reporter else print)


# A test that needs one of these is slow: a finished study, a server, a cluster. The rest of the slow
# tests say so themselves (``@pytest.mark.slow``): ``pytest -m "not slow"`` leaves them all out.
SLOW_FIXTURES = {"finished_study", "own_finished_study", "one_trial_study", "small_study", "competition", "postgres",
                 "postgres_url", "bouncer_url", "server_of_its_own", "cluster"}  # fmt: skip


# The files of the longest tests (a minute or more of the short chaos run, the throughput
# benchmark, Slurm, eight workers): run first, so that the side-by-side run does not end waiting on one.
LONGEST_FIRST = ("tests/test_chaos.py", "tests/test_benchmarks.py", "tests/test_slurm.py",
                 "tests/search/run/test_workers.py", "tests/search/run/test_lifecycle.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {path: place for place, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(LONGEST_FIRST)))


def pytest_sessionfinish(session: pytest.Session) -> None:
    stop_all()  # a failed test's warm ``search`` processes, which would keep the session from ending


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own search home and decode cache; the demo images are shared."""
    monkeypatch.setenv("SEARCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    monkeypatch.delenv("SEARCH_STORAGE", raising=False)
    forget_all()  # what this process kept of earlier tests, as a new process starts empty


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A Hugging Face cache holding test_resnet's hub weights, as after a download, with the hub out
    of reach (offline); returns the weights, and every file name timm asked the hub for in `asked`."""
    import timm
    from huggingface_hub import constants
    from safetensors.torch import save_file

    weights = {k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}
    repo = tmp_path / "hf" / "models--timm--test_resnet.r160_in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(weights, snapshot / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import: HF_HUB_OFFLINE=1 comes too late
    asked: list[str] = []
    download = timm.models._hub.hf_hub_download

    def counted(*args, **kwargs):
        asked.append(kwargs.get("filename") or args[1])
        return download(*args, **kwargs)

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", counted)
    return {"weights": weights, "asked": asked, "file": snapshot / "model.safetensors"}


def search_here(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The ``search`` command run by its ``main`` in this process, as a ``CompletedProcess``.

    For tests about what a command does rather than about its process (signals, several workers,
    imports): it saves the start of a new Python process (about ten seconds on two cores)."""
    from search.cli import main

    out, err = io.StringIO(), io.StringIO()
    # `search run` sets its own SIGTERM and SIGINT handlers: give the test process its own back
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.setenv("PYTHONWARNINGS", "ignore")  # main sets it; give it back afterwards
        for key, value in (env or {}).items():
            patch.setenv(key, value)
        try:
            code = main(list(args))
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
    return subprocess.CompletedProcess(["search", *args], code, out.getvalue(), err.getvalue())


def write_image(path: Path, rng: np.random.Generator, color: tuple[int, int, int], size=(20, 16)) -> None:
    """A small real image file: a coloured block on noise, so classes are learnable."""
    h, w = size
    image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    image[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = color
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    """Three classes as subfolders, imbalanced (24 / 12 / 6), PNG and JPEG mixed."""
    rng = np.random.default_rng(0)
    colors = {"cat": (250, 30, 30), "dog": (30, 250, 30), "fox": (30, 30, 250)}
    for (name, color), count in zip(colors.items(), (24, 12, 6)):
        for i in range(count):
            write_image(tmp_path / "folder" / name / f"{i}.{'png' if i % 2 else 'jpg'}", rng, color)
    return tmp_path / "folder"


@pytest.fixture
def competition_root(tmp_path: Path) -> Path:
    """A competition-layout folder: 12 people × 7 images, mixed extensions, hidden files, one corrupt."""
    rng = np.random.default_rng(1)
    root = tmp_path / "train"
    people = [(f"{i:06d}", ("male", "female")[i % 2], 20 + 7 * i) for i in range(12)]
    stems = ["mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"]
    extensions = [".jpg", ".jpeg", ".png"]
    for n, (pid, gender, age) in enumerate(people):
        folder = root / "images" / f"{pid}_{gender}_Asian_{age}"
        for k, stem in enumerate(stems):
            color = (40 * k % 255, 200 if gender == "male" else 60, min(age * 3, 255))
            write_image(folder / f"{stem}{extensions[(n + k) % 3]}", rng, color)
        (folder / "._mask1.jpg").write_bytes(b"resource fork")  # macOS litter: must be skipped
    (root / "images" / ".DS_Store").write_bytes(b"\0")
    corrupt = next((root / "images" / "000003_female_Asian_41").glob("mask2.*"))
    corrupt.write_bytes(b"not an image")
    return root


STEMS = ["mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"]


def write_competition(root: Path, people: int = 18, seed: int = 3) -> Path:
    """A competition-layout training folder with its train.csv: ``people`` people with seven images
    each (18 give every class people), macOS litter, and person 2's mask2.jpg truncated."""
    rng = np.random.default_rng(seed)
    rows = ["id,gender,race,age,path"]
    for i in range(people):
        gender, age = ("male", "female")[i % 2], (22, 45, 71)[i // 2 % 3]
        folder = f"{i:06d}_{gender}_Asian_{age}"
        rows.append(f"{i:06d},{gender},Asian,{age},{folder}")
        for k, stem in enumerate(STEMS):
            write_image(root / "images" / folder / f"{stem}.jpg", rng, (40 * k % 255, 60 + 90 * (i % 2), age * 3))
        (root / "images" / folder / "._mask1.jpg").write_bytes(b"resource fork")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    broken = root / "images" / "000002_male_Asian_45" / "mask2.jpg"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    return root


def tiny_config(root: Path | None = None, **overrides) -> TrainConfig:
    """A config that trains in seconds on the CPU: tiny timm model, small images."""
    data = {"source": "folder", "root": root, "image_size": 16} if root else {"source": "demo", "image_size": 16}
    base = {
        "data": data,
        "model": {"name": "test_resnet"},
        "epochs": 2,
        "batch_size": 16,
        "optimizer": {"lr": 3e-3},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return TrainConfig.model_validate(base)


@pytest.fixture(scope="session")
def postgres() -> PostgresHere:
    """The suite's own PostgreSQL server, on a free local port, started by the first test that needs
    it and stopped at the end (``machine.py`` says why not one at a fixed address)."""
    require("postgresql")
    with postgres_here(durable=False) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresHere) -> str:
    return postgres.url


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new SQLite file, then the suite's PostgreSQL server: a test of the storage runs on both."""
    return f"sqlite:///{tmp_path}/studies.db" if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def bouncer_url(postgres_url: str):
    """The suite's PostgreSQL server through a real PgBouncer (Debian's), transaction pooling, with
    the shipped deploy/pgbouncer/pgbouncer.ini's pool settings; shared by the tests of that path."""
    require("pgbouncer")
    with pgbouncer(postgres_url) as url:
        yield url


# A stand-in for nvidia-cuda-mps-control (no GPU here) that speaks its protocol: -f serves a
# `control` pipe in CUDA_MPS_PIPE_DIRECTORY until a client writes `quit` to it; without -f it passes
# its standard input to that pipe. It records what it was told, with the time, in $MPS_RECORD.
MPS_CONTROL = """#!/usr/bin/env bash
pipe="${CUDA_MPS_PIPE_DIRECTORY:-/tmp/nvidia-mps}"
if [ "$1" = -f ]; then
    echo "start $(date +%s.%N) pipe=$pipe visible=${CUDA_VISIBLE_DEVICES-unset}" >> "$MPS_RECORD"
    mkfifo "$pipe/control"
    while read -r line < "$pipe/control"; do
        echo "$line $(date +%s.%N)" >> "$MPS_RECORD"
        if [ "$line" = quit ]; then rm "$pipe/control"; exit 0; fi
    done
fi
cat > "$pipe/control"
"""
BROKEN_MPS_CONTROL = """#!/usr/bin/env bash
echo "CUDA driver version is insufficient for CUDA runtime version" >&2
exit 1
"""


def install_mps_control(folder, text: str) -> None:
    """Puts ``text`` on PATH as nvidia-cuda-mps-control."""
    folder.mkdir(exist_ok=True)
    path = folder / "nvidia-cuda-mps-control"
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def mps_control(tmp_path, monkeypatch):
    """The stand-in on PATH, no daemon where CUDA looks by default; returns its record file."""
    install_mps_control(tmp_path / "bin", MPS_CONTROL)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MPS_RECORD", str(tmp_path / "record"))
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "no-daemon-here"))
    return tmp_path / "record"


# A tiny model at a tiny size: a study's trial in seconds on the CPU.
TINY = [
    "--set", "model.name=test_resnet",
    "--set", "data.image_size=16",
    "--set", "train.epochs=3",
    "--set", "train.batch_size=32",
    "--quiet",
]  # fmt: skip
# Two queued trials, the second far behind the first, and a pruner that stops it.
MUST_PRUNE = [
    "--set", "pruner={name: percentile, percentile: 90.0, n_startup_trials: 1, n_warmup_steps: 0}",
    "--set", "enqueue=[{lr: 0.01, scheduler: cosine, loss: cross_entropy, accumulation_steps: 1}, "
    "{lr: 0.0003, scheduler: step, step_size: 1, step_gamma: 0.2, loss: f1, accumulation_steps: 8}]",
]  # fmt: skip
FOUR = {"lr", "scheduler", "loss", "accumulation_steps"}  # what every trial of lr-sweep samples


def search(
    *args: str, env: dict | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess:
    """The real ``search`` command in a process of its own, started warm (``tests/warm.py``)."""
    process = launch(*args, env={**os.environ, **(env or {})})
    out, err = process.communicate(timeout=timeout)
    result = subprocess.CompletedProcess(["search", *args], process.returncode, out, err)
    if check and result.returncode != 0:
        raise AssertionError(f"search {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def optuna_cli(*args: str) -> str:
    """Optuna's own command line, reading what the project wrote."""
    command = Path(sys.executable).parent / "optuna"
    out = subprocess.run([str(command), *args], capture_output=True, text=True, check=True)
    return out.stdout


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory):
    """One small lr-sweep run (5 trials, one pruned) shared by the tests of the commands that read
    a finished study (it is the slow part). Tests that change it add trials only."""
    home = tmp_path_factory.mktemp("home")
    env = {"SEARCH_HOME": str(home), "SEARCH_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "cache")}
    args = ["--study", "lr-sweep", "--n-trials", "5", *TINY, *MUST_PRUNE, "--set", "checkpoints.keep_top_k=1"]
    run = search("run", *args, env=env)
    return {"home": home, "env": env, "args": args, "run": run, "url": f"sqlite:///{home}/studies.db"}


@pytest.fixture
def own_finished_study(finished_study, tmp_path):
    """A copy of the finished study for a test that adds trials to it: the shared one stays as made,
    whichever test process runs the tests that read it, and in whatever order."""
    home = tmp_path / "home"
    shutil.copytree(finished_study["home"], home)
    env = {**finished_study["env"], "SEARCH_HOME": str(home)}
    return {**finished_study, "home": home, "env": env, "url": f"sqlite:///{home}/studies.db"}


@pytest.fixture(scope="session")
def one_trial_study(tmp_path_factory):
    """A finished one-trial study for the cases that need one; none of them changes it."""
    home = tmp_path_factory.mktemp("one")
    env = {"SEARCH_HOME": str(home), "SEARCH_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "cache")}
    run = search_here("run", "--study", "lr-sweep", "--n-trials", "1", *TINY, "--set", "train.epochs=1", env=env)
    assert run.returncode == 0, run.stderr
    return home
