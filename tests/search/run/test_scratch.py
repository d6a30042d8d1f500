"""A worker's scratch folder, beside an artifact folder many machines may share."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_worker_removes_only_what_dead_workers_of_its_own_machine_left(tmp_path):
    """The scratch folder may sit beside an artifact folder shared by many machines: another
    machine's folders, and those of this machine's live workers, are not its to remove."""
    import socket

    from search.run.scratch import scratch_folder

    host = socket.gethostname()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        left = {
            "dead here": tmp_path / f"{host}-{ended.stdout.strip()}",
            "live here": tmp_path / f"{host}-{live.pid}",
            "elsewhere": tmp_path / f"other-{host}-{ended.stdout.strip()}",
        }
        for folder in left.values():
            (folder / "trial-3").mkdir(parents=True)
            (folder / "trial-3" / "best.safetensors").write_bytes(b"weights")
        with scratch_folder(tmp_path) as mine:
            assert mine.is_dir()  # from the start: the folders above it are not empty while it runs
            (mine / "trial-4").mkdir(parents=True)
            assert {name for name, folder in left.items() if folder.exists()} == {"live here", "elsewhere"}
        live.kill()
    assert not mine.exists() and mine.name == f"{host}-{os.getpid()}"
    assert tmp_path.is_dir()  # the other workers' folders are still in it

    study = tmp_path / "work" / "s"
    (study / "elsewhere-7").mkdir(parents=True)  # a worker of another machine, still running
    with scratch_folder(study):
        pass
    assert [p.name for p in study.iterdir()] == ["elsewhere-7"]
    (study / "elsewhere-7").rmdir()  # it ended
    with scratch_folder(study):
        pass
    assert not (tmp_path / "work").exists()  # the last worker to end leaves no empty folders behind
