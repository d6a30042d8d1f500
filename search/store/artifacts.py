"""The artifact store: checkpoints and pictures as files in Optuna's file-system store, each written
whole before the record that points to it."""

from __future__ import annotations

import contextlib
import json
import mimetypes
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from search.store._attrs import trial_artifact_recorded, trial_artifact_recorder
from search.store.database import search_home
from training import DiskError, make_folder, make_readable, pause_point, process_alive

DASHBOARD_ARTIFACTS = "dashboard:artifacts:"


def artifact_dir(given: str | None) -> Path:
    """``--artifacts``, else ``$SEARCH_ARTIFACTS``, else ``search_home()/artifacts``."""
    return Path(given or os.environ.get("SEARCH_ARTIFACTS") or search_home() / "artifacts")


class AtomicArtifactStore(FileSystemArtifactStore):
    """Optuna's file-system store, but a write is a temporary file then a rename: never half a file.
    The temporary file is named by its writer (``.ID~HOST~PID~...``), so that what a killed writer
    left can be told from a live one's (``remove_temporaries``)."""

    def __init__(self, base_path: Path) -> None:
        make_folder(base_path, "the artifact folder", "give another --artifacts")
        super().__init__(base_path)
        self.base_path = base_path
        # files whose record's write failed while nobody could tell whether it landed: artifact id ->
        # ``recorded``, asked again once the database answers (``settle_unsure``)
        self.unsure: dict[str, Callable[[str], bool]] = {}

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        if Path(artifact_id).name != artifact_id or artifact_id in (".", ".."):
            raise ValueError(f"invalid artifact id {artifact_id!r}: a file name, not a path")
        target = self.base_path / artifact_id
        try:
            writer = f"{socket.gethostname()}~{os.getpid()}"
            handle, temporary = tempfile.mkstemp(prefix=f".{artifact_id}~{writer}~", dir=target.parent)
            os.close(handle)
        except OSError as error:
            raise DiskError(f"could not store artifact in {target.parent}: {error.strerror or error}") from None
        try:
            if not self._link(content_body, temporary):
                with open(temporary, "wb") as file:
                    while chunk := content_body.read(1 << 20):
                        file.write(chunk)
                    file.flush()
                    os.fsync(file.fileno())
                make_readable(temporary)
            pause_point("upload")
            os.replace(temporary, target)
        except OSError as error:
            Path(temporary).unlink(missing_ok=True)
            raise DiskError(f"could not store artifact in {target.parent}: {error.strerror or error}") from None

    @staticmethod
    def _link(content_body: BinaryIO, temporary: str) -> bool:
        """A checkpoint on the same file system is linked, not copied: no second write of its bytes."""
        source = getattr(content_body, "name", None)
        if not isinstance(source, str) or not os.path.isfile(source):
            return False
        try:
            os.unlink(temporary)
            os.link(source, temporary)
        except OSError:
            Path(temporary).touch()
            return False
        return True


def upload(
    store: AtomicArtifactStore,
    path: Path,
    record: Callable[[str, str], None],
    recorded: Callable[[str], bool] | None = None,
) -> str:
    """Store a file as an artifact: the bytes first, then ``record(artifact_id, meta_json)`` writes
    the attribute that points to them, so a failed write never leaves a record of a missing or
    truncated file (Optuna's own ``upload_artifact`` has written them in either order across its
    releases). Where the record's write fails (the database went away), ``recorded(artifact_id)``
    asks whether its commit landed all the same (its reply was lost): then the upload stands; where
    it did not, the file is taken away again; where nobody can tell (the database still away), the
    file stays, so that a record never names missing bytes, until ``settle_unsure`` can ask.
    Returns the artifact's id."""
    artifact_id = str(uuid.uuid4())
    with open(path, "rb") as file:
        store.write(artifact_id, file)
    meta = {
        "artifact_id": artifact_id,
        "filename": path.name,
        "mimetype": mimetypes.guess_type(path.name)[0] or "application/octet-stream",
        "encoding": None,
    }
    try:
        record(artifact_id, json.dumps(meta))
    except Exception:
        if not _landed(store, artifact_id, recorded):
            raise
    except BaseException:  # interrupted: its trial ends FAIL, and a failed trial's files go with it
        remove(store, artifact_id)
        raise
    return artifact_id


def _landed(store: AtomicArtifactStore, artifact_id: str, recorded: Callable[[str], bool] | None) -> bool:
    """After its record's write failed: whether the record landed all the same. The file is taken
    away only where it surely did not."""
    try:
        landed = recorded is not None and recorded(artifact_id)
    except Exception:  # noqa: BLE001 - the database still away: nobody can tell, so the bytes stay for now
        store.unsure[artifact_id] = recorded
        return False
    if not landed:
        remove(store, artifact_id)
    return landed


def settle_unsure(store: AtomicArtifactStore) -> None:
    """The files kept while nobody could tell whether their record landed, asked again (the
    database answers again): a file no record names is removed; one still unknown stays listed."""
    for artifact_id, recorded in list(store.unsure.items()):
        try:
            landed = recorded(artifact_id)
        except Exception:  # noqa: BLE001 - still away: asked again later
            continue
        del store.unsure[artifact_id]
        if not landed:
            remove(store, artifact_id)


def dashboard_artifact_key(trial_id: int, artifact_id: str) -> str:
    """The study attribute under which optuna-dashboard finds a trial's file (a note's picture):
    unlike Optuna's own trial attribute, it can be written after the trial finished."""
    return f"{DASHBOARD_ARTIFACTS}{trial_id}:{artifact_id}"


def upload_to_trial(store: AtomicArtifactStore, path: Path, trial: optuna.Trial) -> str:
    """A running trial's file (its checkpoint), recorded where Optuna keeps a trial's artifacts."""
    record = trial_artifact_recorder(trial)
    if record is None:  # this Optuna keeps them under another key: its own upload writes it
        return optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    return upload(store, path, record, trial_artifact_recorded(trial))


def stored(store: AtomicArtifactStore, artifact_id: str | None, copy_to: Path | None = None) -> bool:
    """Whether the store has the artifact; copied to ``copy_to`` when given."""
    if not artifact_id:
        return False
    try:
        with store.open_reader(artifact_id) as reader:
            if copy_to is not None:
                with open(copy_to, "wb") as writer:
                    shutil.copyfileobj(reader, writer)
    except ArtifactNotFound:
        return False
    return True


def remove(store: AtomicArtifactStore, artifact_id: str) -> None:
    """Remove an artifact; one already gone (removed by this or another worker) is no error."""
    try:
        store.remove(artifact_id)
    except ArtifactNotFound:
        pass


def remove_temporaries(store: AtomicArtifactStore, worker: str | None = None) -> None:
    """Removes the temporary files of writes that stopped half way (the writer was killed, or lost
    its machine): those of ``worker`` (``HOST:PID``, as a trial records its worker) where given, a
    worker known to be gone; else those of this machine's processes that no longer run."""
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        for left in store.base_path.glob(".*~*~*~*"):
            _, writer_host, pid, _ = left.name.split("~", 3)
            gone = writer_host == host and pid.isdigit() and not process_alive(int(pid))
            named = f"{writer_host}:{pid}" == worker and (writer_host != host or gone)  # never a live one's here
            if named or (worker is None and gone):
                left.unlink(missing_ok=True)


def not_in_store(store: AtomicArtifactStore) -> str:
    """Why an artifact a trial recorded is not found."""
    return (
        f"not in {store.base_path}: removed by checkpoint retention, or the run kept its artifacts in "
        "another folder (--artifacts, $SEARCH_ARTIFACTS)"
    )
