"""Study files: loaded once into frozen objects; every mistake one line naming the file, the key
and the value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from search.cli import main
from search.study import STUDIES_DIR, load_study
from training.errors import ConfigError

LR_SWEEP = STUDIES_DIR / "lr-sweep.yaml"


def test_shipped_studies_load_and_sample_the_four_names():
    study = load_study("lr-sweep")
    assert study.name == "lr-sweep" and study.data.source == "demo"
    assert set(study.space["scheduler"]) == {"step", "cosine", "plateau"}
    assert set(study.space["loss"]) == {"cross_entropy", "focal", "label_smoothing", "f1"}
    assert study.space["lr"].log and study.space["accumulation_steps"].choices == [1, 2, 4, 8]
    mask = load_study("mask-lr-sweep", ["data.root=/data/train"])
    assert mask.model.name == "efficientnet_b0" and mask.data.source == "competition"
    assert str(mask.data.root) == "/data/train"


def test_data_root_from_the_environment(monkeypatch):
    monkeypatch.setenv("MASK_DATA", "/srv/mask/train")
    assert str(load_study("mask-lr-sweep").data.root) == "/srv/mask/train"


def test_set_overrides_any_field_and_is_validated():
    study = load_study("lr-sweep", ["train.epochs=3", "pruner={name: hyperband, min_resource: 1}", "space.lr.high=0.1"])
    assert study.train.epochs == 3 and study.pruner.name == "hyperband" and study.space["lr"].high == 0.1


def test_set_fills_a_section_left_empty_in_the_file(tmp_path):
    path = tmp_path / "empty-section.yaml"
    path.write_text(LR_SWEEP.read_text() + "\nwarm_start:\n")
    study = load_study(str(path), ["warm_start.study=last-week"])
    assert study.warm_start.study == "last-week" and study.warm_start.top == 3
    with pytest.raises(ConfigError, match="'name' is not a section"):
        load_study(str(path), ["name.x=1"])


def _write(tmp_path: Path, mutate) -> str:
    raw = yaml.safe_load(LR_SWEEP.read_text())
    mutate(raw)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _set(path: str, value):
    def mutate(raw):
        node = raw
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return mutate


BAD_STUDIES = [
    ("unknown key", _set("trian", {}), "unknown key 'trian'; did you mean 'train'?"),
    ("unknown nested key", _set("train.epocs", 3), "unknown key 'train.epocs'; did you mean 'train.epochs'?"),
    ("unknown key, nothing near", _set("train.zzz", 3), "unknown key 'train.zzz'; remove it or check its spelling"),
    ("wrong type", _set("train.epochs", "many"), "train.epochs = 'many'"),
    ("inverted range", _set("space.lr", {"low": 0.1, "high": 0.01, "log": True}), "low (0.1) must be below high"),
    ("log with low <= 0", _set("space.lr", {"low": 0.0, "high": 0.01, "log": True}), "log scale needs low > 0"),
    ("empty choices", _set("space.accumulation_steps", {"choices": []}), "choices must not be empty"),
    ("unknown loss", _set("space.loss", {"dice": {}}), "unknown loss 'dice'"),
    ("unknown scheduler", _set("space.scheduler", {"onecycle": {}}), "unknown scheduler 'onecycle'"),
    ("unknown model", _set("model.name", "resnet9000"), "unknown timm model 'resnet9000'"),
    ("misspelt model", _set("model.name", "convnext_tinyy"), "'convnext_tinyy' (did you mean convnext_tiny,"),
    ("a letter for a digit", _set("model.name", "efficientnet_bO"), "(did you mean efficientnet_b0, "),
    (
        "an unknown tag",
        _set("model.name", "test_resnet.bogus"),
        "model.name = 'test_resnet.bogus': timm has no weights tagged 'bogus' for test_resnet; its tags: r160_in1k",
    ),
    # a ViT takes only the size it was built for: said here, not by every trial's first batch
    (
        "fixed input size",
        _set("model.name", "vit_tiny_patch16_224"),
        "model.name = 'vit_tiny_patch16_224' takes only 224x224 images (a fixed input size in timm), "
        "data.image_size is 32x32: set data.image_size: 224 or choose a model without a fixed input size",
    ),
    ("unknown sampler", _set("sampler", {"name": "bayes"}), "unknown sampler 'bayes'"),
    ("unknown pruner", _set("pruner", {"name": "early"}), "unknown pruner 'early'"),
    ("bad pruner option", _set("pruner", {"name": "median", "warmup": 2}), "unexpected keyword argument 'warmup'"),
    (
        "conditional param of another",
        _set("space.loss", {"focal": {"smoothing": {"low": 0.1, "high": 0.2}}}),
        "'smoothing' is not a parameter of loss 'focal'",
    ),
    (
        "enqueued value outside the space",
        _set("enqueue", [{"lr": 5.0, "loss": "cross_entropy"}]),
        "enqueue[0]: lr=5.0 is outside",
    ),
    ("enqueued unknown choice", _set("enqueue", [{"loss": "dice"}]), "enqueue[0]: loss='dice' is not one of"),
    ("val_ratio out of range", _set("data.val_ratio", 1.5), "data.val_ratio = 1.5"),
    (
        "variable not set",
        _set("data.root", "${NO_SUCH_DATA}/train"),
        "data.root = '${NO_SUCH_DATA}/train': environment variable ${NO_SUCH_DATA} is not set; set it, "
        "or give --set data.root=VALUE",
    ),
    ("missing section", lambda raw: raw.pop("space"), "missing key 'space'; add it"),
]


@pytest.mark.parametrize("case, mutate, message", BAD_STUDIES, ids=[c[0] for c in BAD_STUDIES])
def test_bad_study_file_is_one_line_naming_file_key_value_exit_2(tmp_path, capsys, case, mutate, message):
    path = _write(tmp_path, mutate)
    code = main(["run", "--study", path, "--n-trials", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("search: error: ") and path in err, err
    assert message in err, err


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.epochs=0"], "lr-sweep.yaml with --set train.epochs: train.epochs = 0"),
        (["space.lr.low=-1", "train.epochs=2"], "lr-sweep.yaml with --set space.lr.low: space.lr = {"),
        (["train={epochs: 2, turbo: 1}"], "with --set train: unknown key 'train.turbo'"),
        (["noequals"], "expected key=value"),
        (["model.name=nonexistent_net"], "with --set model.name: model.name = 'nonexistent_net': unknown timm model"),
        (
            ["train.compile=true", "train.cuda_graphs=true"],
            "with --set train.cuda_graphs: train.cuda_graphs = True: cannot be on with train.compile",
        ),
    ],
)
def test_bad_set_is_validated_the_same_way(capsys, overrides, message):
    args = ["run", "--study", "lr-sweep"]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_malformed_yaml_names_the_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nspace:\n  lr: {low: 1\n  loss: [\n")
    assert main(["run", "--study", str(path)]) == 2
    err = capsys.readouterr().err
    assert "broken.yaml: line" in err and "fix the YAML syntax" in err


def test_a_study_file_that_is_not_text_is_one_line(tmp_path, capsys):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00name: x")  # UTF-16 from an editor, or not a study file at all
    assert main(["run", "--study", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"search: error: {path}: cannot read it (not UTF-8 text); a study file is UTF-8 YAML"


def test_unknown_study_name_lists_the_known_ones(capsys):
    assert main(["run", "--study", "no-such-study"]) == 2
    err = capsys.readouterr().err
    assert "no study file for 'no-such-study'" in err and "lr-sweep" in err
    assert not Path(".search").exists()  # the study file is read before the storage is opened or made


@pytest.mark.slow
def test_the_real_command_prints_no_traceback_and_debug_does(tmp_path):
    path = _write(tmp_path, _set("train.epochs", "many"))
    plain = subprocess.run([sys.executable, "-m", "search", "run", "--study", path], capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="train.epochs"):  # --debug lets it through, traceback and all
        main(["run", "--study", path, "--debug"])


def test_the_name_tables_a_study_is_checked_against_are_the_implementations_names():
    from training.config import LOSS_PARAMS, SCHEDULER_PARAMS
    from training.losses import LOSSES
    from training.schedulers import SCHEDULERS

    assert set(LOSS_PARAMS) == set(LOSSES)
    assert set(SCHEDULER_PARAMS) == set(SCHEDULERS)


@pytest.mark.parametrize("mutate", [_set("space.loss", {"dice": {}}), _set("trian", {})], ids=["loss", "key"])
def test_a_bad_study_file_is_answered_before_torch_is_imported(tmp_path, mutate):
    """Everything but the timm names is checked first, without the seconds torch and timm take."""
    path = _write(tmp_path, mutate)
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "search", "run", "--study", path], capture_output=True, text=True
    )
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and lines[-1].startswith("search: error: "), run.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
    assert "optuna" in imported and "torch" not in imported and "timm" not in imported
