from __future__ import annotations

import cv2
import numpy as np
import pytest

from training import DataError
from training.data import cache as decode_cache
from training.data.sources import image_folder


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
    decode_cache._IN_PROCESS.clear()  # as in a new process
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
