from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from training import DataConfig, DataError
from training.data import cache as decode_cache
from training.data.sources import cache_folder, image_folder, load_source
from training.per_process import forget_all


def _count_decodes(monkeypatch):
    calls = []
    real = cv2.imread

    def counting(path, flags=cv2.IMREAD_COLOR):
        calls.append(path)
        return real(path, flags)

    monkeypatch.setattr(cv2, "imread", counting)
    return calls


def test_decodes_each_file_once_per_process(folder_dataset, monkeypatch):
    calls = _count_decodes(monkeypatch)
    data = image_folder(folder_dataset)
    first = decode_cache.decode_images(data, (16, 12))
    second = decode_cache.decode_images(data, (16, 12))
    assert len(calls) == 42 and second is first
    assert first.images.shape == (42, 16, 12, 3) and first.images.dtype == np.uint8


def test_persisted_cache_lets_a_new_process_skip_decoding(folder_dataset, tmp_path, monkeypatch):
    data = image_folder(folder_dataset)
    first = decode_cache.decode_images(data, (16, 16), cache_dir=tmp_path / "c")
    forget_all()  # as in a new process
    calls = _count_decodes(monkeypatch)
    again = decode_cache.decode_images(data, (16, 16), cache_dir=tmp_path / "c")
    assert calls == []
    assert np.array_equal(again.images, first.images) and again.class_names == first.class_names


def test_cache_key_changes_with_size_and_file_contents(folder_dataset):
    data = image_folder(folder_dataset)
    key = decode_cache.cache_key(data, (16, 16))
    assert decode_cache.cache_key(data, (32, 32)) != key
    path = folder_dataset / "cat" / "0.jpg"
    path.write_bytes(path.read_bytes() + b"\0")
    assert decode_cache.cache_key(data, (16, 16)) != key


def test_decoded_images_are_rgb(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 2] = 255  # BGR red
    (tmp_path / "f" / "red").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "f" / "red" / "a.png"), image)
    decoded = decode_cache.decode_images(image_folder(tmp_path / "f"), (8, 8))
    assert decoded.images[0, 0, 0].tolist() == [255, 0, 0]


def test_a_class_left_with_no_readable_image_stops(folder_dataset):
    for path in (folder_dataset / "fox").iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"\['fox'\] have no readable images"):
        decode_cache.decode_images(image_folder(folder_dataset), (16, 16))


def test_a_new_process_maps_the_cache_and_cannot_change_it(folder_dataset, tmp_path):
    data = image_folder(folder_dataset)
    first = decode_cache.decode_images(data, (16, 16), cache_dir=tmp_path / "c")
    assert isinstance(first.images, np.memmap)  # the decoding worker reads the file too: one copy
    expected = np.array(first.images)
    forget_all()
    again = decode_cache.decode_images(data, (16, 16), cache_dir=tmp_path / "c")
    assert isinstance(again.images, np.memmap) and again.images.filename == first.images.filename
    again.images[0] = 7  # stays in this process (copy-on-write)
    forget_all()
    third = decode_cache.decode_images(data, (16, 16), cache_dir=tmp_path / "c")
    assert np.array_equal(third.images, expected)


def test_an_unreadable_cache_is_decoded_again_and_replaced(folder_dataset, tmp_path, monkeypatch, caplog):
    data = image_folder(folder_dataset)
    first = decode_cache.decode_images(data, (16, 16), cache_dir=tmp_path / "c")
    expected, stored = np.array(first.images), first.images.filename
    with open(stored, "r+b") as file:  # a crash or a full disk left it short
        file.truncate(1000)
    forget_all()
    calls = _count_decodes(monkeypatch)
    again = decode_cache.decode_images(data, (16, 16), cache_dir=tmp_path / "c")
    assert len(calls) == 42 and "ignoring unreadable decode cache" in caplog.text
    assert np.array_equal(again.images, expected) and again.images.filename == stored
    key = decode_cache.cache_key(data, (16, 16))
    assert sorted(p.name for p in (tmp_path / "c" / "decoded").iterdir()) == [key, f"{key}.lock"]  # none set aside


def test_the_cache_folder_has_the_permissions_of_a_plain_folder(folder_dataset, tmp_path):
    """Readable by the workers of other users where the umask lets it (a temporary folder is private)."""
    (tmp_path / "plain").mkdir()
    decoded = decode_cache.decode_images(image_folder(folder_dataset), (16, 16), cache_dir=tmp_path / "c")
    folder = Path(decoded.images.filename).parent
    assert folder.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def test_a_second_worker_saving_the_same_cache_keeps_the_first(folder_dataset, tmp_path):
    data = image_folder(folder_dataset)
    decoded = decode_cache.decode_images(data, (16, 16))
    folder = tmp_path / "decoded" / "key"
    assert decode_cache._save(folder, decoded)
    made = (folder / "images.npy").stat().st_mtime_ns
    assert decode_cache._save(folder, decoded)  # two workers decoded at once: the second finds it there
    assert [p.name for p in folder.parent.iterdir()] == ["key"]  # its own copy removed
    assert (folder / "images.npy").stat().st_mtime_ns == made


def test_a_cache_that_cannot_be_written_leaves_the_decoded_images(folder_dataset, tmp_path, caplog):
    (tmp_path / "c").write_text("a file where the cache folder should be")
    decoded = decode_cache.decode_images(image_folder(folder_dataset), (16, 16), cache_dir=tmp_path / "c")
    assert decoded.images.shape == (42, 16, 16, 3) and not isinstance(decoded.images, np.memmap)
    assert "could not persist the decode cache" in caplog.text


def test_a_cache_folder_that_cannot_be_written_gives_way_to_a_private_temporary_one(
    folder_dataset, tmp_path, monkeypatch, caplog
):
    (tmp_path / "home").write_text("a file where the home folder should be")  # as a home of /, read-only
    monkeypatch.setenv("SEARCH_CACHE_DIR", str(tmp_path / "home" / ".cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    fallback = tmp_path / "tmp" / f"search-cache-{os.getuid()}"
    assert cache_folder(None) == fallback and cache_folder(None) == fallback
    assert stat.S_IMODE(fallback.stat().st_mode) == 0o700  # this user's, in a folder every user shares
    said = [r.getMessage() for r in caplog.records if "cannot write the cache folder" in r.getMessage()]
    assert len(said) == 1 and str(tmp_path / "home" / ".cache") in said[0] and str(fallback) in said[0]
    # the demo is written there, and the decoded images persisted there for the next process
    assert load_source(DataConfig(source="demo")).source.startswith(str(fallback))
    decoded = decode_cache.decode_images(image_folder(folder_dataset), (16, 16), cache_dir=cache_folder(None))
    assert isinstance(decoded.images, np.memmap) and (fallback / "decoded").is_dir()


@pytest.mark.parametrize("made", ["by another user", "as a link"])
def test_a_temporary_cache_folder_someone_else_made_is_not_used(made, tmp_path, monkeypatch, caplog):
    # made first by another user of the machine, who could plant a cache in it
    if made == "by another user" and os.getuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    (tmp_path / "home").write_text("not a folder")
    monkeypatch.setenv("SEARCH_CACHE_DIR", str(tmp_path / "home" / ".cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    theirs = tmp_path / f"search-cache-{os.getuid()}"
    if made == "as a link":
        (tmp_path / "planted").mkdir()
        theirs.symlink_to(tmp_path / "planted")
    else:
        theirs.mkdir(mode=0o777)
        os.chown(theirs, os.getuid() + 1, -1)
    assert cache_folder(None) is None
    assert "nor" in caplog.text and "each process decodes the images itself" in caplog.text
    with pytest.raises(DataError, match="no writable folder for the demo images.*SEARCH_CACHE_DIR"):
        load_source(DataConfig(source="demo"))


DECODE_ONCE = """
import sys, threading, time
import cv2
from training.data import cache
from training.data.sources import image_folder

calls, real, lock = [], cv2.imread, threading.Lock()
def slow(path, flags=cv2.IMREAD_COLOR):
    with lock:  # the decode's threads call it at once
        if not calls:
            print("decoding", flush=True)
        calls.append(path)
    time.sleep(0.02)  # long enough that the two workers overlap
    return real(path, flags)
cv2.imread = slow
data = image_folder(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
decoded = cache.decode_images(data, (16, 16), cache_dir=sys.argv[2])
print(len(calls), int(decoded.images.sum()), flush=True)
"""


def test_workers_starting_at_once_decode_once_per_machine(folder_dataset, tmp_path):
    command = [sys.executable, "-c", DECODE_ONCE, str(folder_dataset), str(tmp_path / "c")]
    workers = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready"
    for worker in workers:  # both ask for the images at once
        worker.stdin.write("go\n")
        worker.stdin.flush()
    reports = [worker.communicate(timeout=120)[0].split() for worker in workers]
    assert all(worker.returncode == 0 for worker in workers)
    reports = [report[1:] if report[0] == "decoding" else report for report in reports]
    assert sorted(int(calls) for calls, _ in reports) == [0, 42]  # one decoded, the other waited and mapped
    assert reports[0][1] == reports[1][1]  # the same images


def test_a_worker_killed_while_decoding_leaves_the_next_one_to_decode(folder_dataset, tmp_path):
    command = [sys.executable, "-c", DECODE_ONCE, str(folder_dataset), str(tmp_path / "c")]
    first, second = (subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                     for _ in range(2))  # fmt: skip
    for worker in (first, second):
        assert worker.stdout.readline().strip() == "ready"
    first.stdin.write("go\n")
    first.stdin.flush()
    assert first.stdout.readline().strip() == "decoding"  # it holds the lock now
    second.stdin.write("go\n")
    second.stdin.flush()
    first.kill()  # mid-decode
    first.wait()
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 0 and out.split()[:2] == ["decoding", "42"]  # waited, then decoded itself
    assert (tmp_path / "c" / "decoded" / decode_cache.cache_key(image_folder(folder_dataset), (16, 16))).is_dir()


def test_what_a_worker_killed_while_writing_the_cache_left_is_removed(folder_dataset, tmp_path):
    data = image_folder(folder_dataset)
    key = decode_cache.cache_key(data, (16, 16))
    decoded = tmp_path / "c" / "decoded"
    left = decoded / f".{key}-x1y2z3"  # its temporary folder, never renamed into place
    left.mkdir(parents=True)
    (left / "images.npy").write_bytes(b"\x93NUMPY" + bytes(100))
    other = decoded / ".0123456789abcdef0123-a1b2c3"  # another cache's, maybe being written now
    other.mkdir()
    decode_cache.decode_images(data, (16, 16), cache_dir=tmp_path / "c")
    assert not left.exists() and other.exists()
    assert sorted(p.name for p in decoded.iterdir()) == sorted([key, f"{key}.lock", other.name])


def test_a_worker_waiting_for_another_ones_decode_says_so(folder_dataset, tmp_path, caplog):
    import fcntl
    import threading

    data = image_folder(folder_dataset)
    lock_path = tmp_path / "c" / "decoded" / f"{decode_cache.cache_key(data, (16, 16))}.lock"
    lock_path.parent.mkdir(parents=True)
    said = f"waiting for another worker of this machine to decode the images (it holds {lock_path})"
    with open(lock_path, "a") as held:  # another worker, decoding
        fcntl.flock(held, fcntl.LOCK_EX)
        waiting = threading.Thread(target=decode_cache.decode_images, args=(data, (16, 16), tmp_path / "c"))
        waiting.start()
        deadline = time.monotonic() + 30
        while said not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        assert said in caplog.text and waiting.is_alive()  # it says why it waits, and waits
    waiting.join(timeout=60)
    assert not waiting.is_alive()  # the other one let go: it went on


def test_a_jpeg_that_ends_early_is_left_out_and_named_as_damaged_unless_kept(folder_dataset, tmp_path, capfd):
    """OpenCV decodes a JPEG cut short with a grey tail (libjpeg's warning on stderr only)."""
    from training import DataConfig, prepare_data

    cut = folder_dataset / "cat" / "cut.jpg"
    whole = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(cut), whole)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 2 // 3])
    assert cv2.imread(str(cut)) is not None  # decodes: the defect
    config = DataConfig(source="folder", root=folder_dataset, image_size=16, cache_dir=tmp_path / "c")
    left = prepare_data(config, 0)
    assert str(cut) not in left.decoded.paths and left.decoded.damaged == (str(cut),)
    kinds = {k.kind: k for k in left.facts.left_out}
    assert kinds["damaged image"].first == (str(cut),) and kinds["damaged image"].count == 1
    assert "damaged image" in " ".join(left.notes) and "data.keep_damaged: true" in left.facts.lines()[-1]
    kept = prepare_data(config.model_copy(update={"keep_damaged": True}), 0)
    assert str(cut) in kept.decoded.paths and not kept.decoded.damaged
    assert len(kept.decoded.paths) == len(left.decoded.paths) + 1
    key = decode_cache.cache_key(image_folder(folder_dataset), (16, 16))
    again = decode_cache._load(tmp_path / "c" / "decoded" / key)
    assert again.damaged == (str(cut),)  # as the next worker reads the cache
