from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch

import training.predict
from search.cli import main
from tests.conftest import tiny_config
from training import train
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data.cache import decode_image
from training.data.prepare import prepare_data
from training.loop import predict_probs
from training.predict import predict_files
from training.setup import InputPipe, build_loaders


@pytest.fixture
def checkpoint_and_images(folder_dataset, tmp_path):
    config = tiny_config(folder_dataset, epochs=2, output_dir=tmp_path / "ckpt")
    result = train(config)
    data = prepare_data(config.data, config.seed)
    test_dir = tmp_path / "eval"
    test_dir.mkdir()
    names = []
    for i in data.val_idx:
        source = data.decoded.paths[i]
        name = f"{i:03d}_{source.rsplit('/', 1)[1]}"
        shutil.copy(source, test_dir / name)
        names.append(name)
    return config, result.checkpoint, test_dir, names, data


def test_predict_fills_the_competition_info_csv(checkpoint_and_images, tmp_path, capsys):
    config, checkpoint, images, names, data = checkpoint_and_images
    info = tmp_path / "info.csv"
    info.write_text("ImageID,ans\n" + "".join(f"{n},0\n" for n in reversed(names)))
    out = tmp_path / "submission.csv"
    assert main(["predict", "--checkpoint", str(checkpoint), "--images", str(images), "--info", str(info),
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    rows = list(csv.DictReader(open(out)))
    assert [r["ImageID"] for r in rows] == list(reversed(names))  # info.csv's order, its columns
    # the same predictions as the trial's own evaluation of these images
    model, meta = load_checkpoint(checkpoint)
    _, val_loader = build_loaders(config, data)
    probs, _ = predict_probs(model, val_loader, InputPipe(meta["mean"], meta["std"], torch.device("cpu")))
    expected = dict(zip(names, probs.argmax(1).tolist()))
    assert {r["ImageID"]: int(r["ans"]) for r in rows} == expected


def test_predict_without_info_writes_labels_and_probabilities_and_tta_runs(checkpoint_and_images, tmp_path, capsys):
    _, checkpoint, images, names, _ = checkpoint_and_images
    out = tmp_path / "pred.csv"
    args = ["predict", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out), "--quiet"]
    assert main([*args, "--tta"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert sorted(r["path"] for r in rows) == sorted(names)
    probs = np.array([[float(r[f"prob_{c}"]) for c in ("cat", "dog", "fox")] for r in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert all(r["class_name"] == ("cat", "dog", "fox")[int(r["label"])] for r in rows)
    capsys.readouterr()
    assert main([*args[:-1], "--force"]) == 0  # not quiet, and not on a terminal: no bar, its closing line only
    assert capsys.readouterr().err.strip().splitlines() == [f"{len(names)} predictions written to {out}"]
    assert main(args) == 2  # exists: refuses without --force
    under_a_file = out / "pred.csv"
    assert main([*args[:-2], str(under_a_file), "--quiet"]) == 1
    assert f"could not write predictions {under_a_file}" in capsys.readouterr().err


def test_predict_names_a_missing_listed_image(checkpoint_and_images, tmp_path, capsys):
    _, checkpoint, images, _, _ = checkpoint_and_images
    info = tmp_path / "info.csv"
    info.write_text("ImageID,ans\nnot_there.jpg,0\n")
    code = main(["predict", "--checkpoint", str(checkpoint), "--images", str(images), "--info", str(info),
                 "--out", str(tmp_path / "s.csv"), "--quiet"])  # fmt: skip
    assert code == 1 and "not_there.jpg" in capsys.readouterr().err


def test_predict_with_a_file_that_is_not_a_checkpoint_says_so_in_one_line(checkpoint_and_images, tmp_path, capsys):
    _, checkpoint, images, names, _ = checkpoint_and_images
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"  # a safetensors file, but not one of ours
    save_file({"w": torch.zeros(2)}, str(foreign))
    cases = {
        images / names[0]: "is not a readable checkpoint (",  # an image given as the checkpoint
        tmp_path / "missing.safetensors": "is not a readable checkpoint (",
        foreign: "is a safetensors file but not a search checkpoint",
    }
    for path, said in cases.items():
        code = main(["predict", "--checkpoint", str(path), "--images", str(images), "--out", str(tmp_path / "p.csv")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and said in err[0] and str(path) in err[0], err  # no progress bar first
    assert not (tmp_path / "p.csv").exists()


def test_several_checkpoints_predict_as_an_ensemble_each_at_its_own_size(
    checkpoint_and_images, tmp_path, monkeypatch, capsys
):
    config, checkpoint, images, names, _ = checkpoint_and_images
    other = train(tiny_config(config.data.root, seed=7, data={"image_size": 24}, output_dir=tmp_path / "other"))
    paths = [str(images / n) for n in sorted(names)]
    single = [predict_files([c], paths)[0] for c in (checkpoint, other.checkpoint)]
    assert not np.allclose(single[0], single[1])  # two different models
    out = tmp_path / "ensemble.csv"
    assert main(["predict", "--checkpoint", str(checkpoint), str(other.checkpoint), "--images", str(images),
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    rows = sorted(csv.DictReader(open(out)), key=lambda r: r["path"])
    probs = np.array([[float(r[f"prob_{c}"]) for c in ("cat", "dog", "fox")] for r in rows])
    assert np.allclose(probs, (single[0] + single[1]) / 2, atol=2e-6)
    assert [int(r["label"]) for r in rows] == probs.argmax(1).tolist()
    decodes = []  # an image is decoded once for each input size among the checkpoints, not for each checkpoint
    monkeypatch.setattr(training.predict, "decode_image", lambda p, size: decodes.append(size) or decode_image(p, size))
    predict_files([checkpoint, other.checkpoint, checkpoint], paths)
    assert sorted(decodes) == sorted([(16, 16)] * len(paths) + [(24, 24)] * len(paths))

    model, meta = load_checkpoint(checkpoint)  # a checkpoint of other classes cannot join the ensemble
    save_checkpoint(tmp_path / "birds.safetensors", model, {**meta, "class_names": ["crow", "gull", "owl"]})
    mixed = tmp_path / "mixed.csv"
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "birds.safetensors"),
                 "--images", str(images), "--out", str(mixed), "--quiet"])  # fmt: skip
    assert code == 2 and not mixed.exists()
    assert capsys.readouterr().err.strip().splitlines() == [
        f"search: error: {tmp_path / 'birds.safetensors'} predicts other classes than {checkpoint} "
        "(['crow', 'gull', 'owl'] against ['cat', 'dog', 'fox']); an ensemble needs checkpoints of the same classes"
    ]
