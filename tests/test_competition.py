"""A competition user's study on data in the competition's layout: what the commands, the dashboard
and the report show is what the run did. Two studies on the same data, the second read from the
decode cache as a new process reads it; one numbering of epochs from the live lines to the report."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from optuna_dashboard import get_note

from search.report.parts import confused_parts, part_scores
from tests.conftest import search_here, write_competition
from training import TrainResult, competition_class_names
from training.data import cache as decode_cache
from training.data import prepare
from training.per_process import forget_all

RUN = [
    "run", "--study", "mask-lr-sweep", "--n-trials", "2",
    "--set", "model.name=test_resnet", "--set", "model.pretrained=false", "--set", "data.image_size=16",
    "--set", "train.epochs=2", "--set", "train.batch_size=32", "--set", "train.augment.rare=[]",
    "--set", "pruner={name: none}",
    "--set", "enqueue=[{lr: 0.001, accumulation_steps: 1, scheduler: cosine, loss: cross_entropy}]",
]  # fmt: skip


@pytest.fixture(scope="module")
def competition(tmp_path_factory):
    """18 people with seven images each (every class has people), a train.csv, a truncated image and
    macOS litter; two studies on it, the second decoded from the cache alone."""
    root = write_competition(tmp_path_factory.mktemp("mask") / "train")
    broken = root / "images" / "000002_male_Asian_45" / "mask2.jpg"
    home = tmp_path_factory.mktemp("home")
    env = {"SEARCH_HOME": str(home), "MASK_DATA": str(root)}
    first = search_here(*RUN, "--set", "name=mask-a", env=env)
    assert first.returncode == 0, first.stderr
    forget_all()  # as a new process: the images only in the machine's decode cache
    prepare._PREPARED.clear()
    decoded = []
    original = decode_cache._decode_all
    decode_cache._decode_all = lambda *args: decoded.append(1) or original(*args)
    try:
        second = search_here(*RUN, "--quiet", "--set", "name=mask-b", env=env)
    finally:
        decode_cache._decode_all = original
    assert second.returncode == 0 and decoded == [], second.stderr
    return {"root": root, "home": home, "env": env, "broken": broken, "first": first}


@pytest.mark.slow
def test_the_datas_facts_are_shown_for_a_study_read_from_the_cache(competition):
    env, broken = competition["env"], competition["broken"]
    status = search_here("status", "--study", "mask-b", env=env).stdout
    study = optuna.load_study(study_name="mask-b", storage=f"sqlite:///{competition['home']}/studies.db")
    facts = json.loads(study.user_attrs["data_facts"])
    val_people = facts["val_people"]
    assert f"  data: 125 images, 18 classes, 18 people, {val_people} of them for validation, 1 item left out" in status
    assert f"  split: {125 - facts['val_images']} train and {facts['val_images']} validation images of " \
           f"{18 - val_people} and {val_people} people" in status  # fmt: skip
    assert f"  left out: 1 x unreadable image (cannot be decoded): {broken}" in status
    per_class = re.search(r"validation images per class: (.*)", status)[1].split(", ")
    assert len(per_class) == 18 and per_class[0].startswith("mask/male/<30 ")
    studies = search_here("studies", env=env).stdout
    for name in ("mask-a", "mask-b"):
        assert re.search(rf"{name} .*\(125 images, 18 classes, 18 people, {val_people} of them for validation", studies)


@pytest.mark.slow
def test_one_epoch_numbering_from_the_live_lines_to_the_report(competition, tmp_path):
    env = competition["env"]
    live = competition["first"].stderr
    assert "trial 0 epoch 0 (1 of 2) macro-F1" in live and "trial 0 epoch 1 (2 of 2) macro-F1" in live
    assert live.count("decoding images") == 1  # not a terminal: the decode's count once, when it is done
    study = optuna.load_study(study_name="mask-a", storage=f"sqlite:///{competition['home']}/studies.db")
    top = study.best_trial
    assert sorted(top.intermediate_values) == [0, 1]  # the dashboard's steps
    assert study.metric_names == ["macro_f1"]  # the dashboard's name for the objective
    best_epoch = max(top.intermediate_values, key=lambda step: (top.intermediate_values[step], -step))
    shown = json.loads(search_here("best", "--study", "mask-a", env=env).stdout)
    assert shown["metrics"]["best_epoch"] == best_epoch
    assert f"macro-F1 {top.value:.4f} at epoch {best_epoch}\n" in get_note(optuna.Trial(study, top._trial_id))
    # each class's F1 by its name, in the order of the classes
    assert list(shown["metrics"]["per_class_f1"]) == list(competition_class_names((30, 60)))
    out = tmp_path / "report"
    assert search_here("report", "--study", "mask-a", "--out", str(out), env=env).returncode == 0
    page = (out / "index.html").read_text()
    row = re.search(rf"<tr><td>{top.number}</td><td>[^<]*</td><td>(\d+)</td>", page)
    assert row and int(row[1]) == best_epoch and "Epochs are counted from 0" in page
    exported = search_here("export", "--study", "mask-a", "--all-data", "--out", str(tmp_path / "all"), env=env)
    assert f"trained on all the data for epochs 0 to {best_epoch}, its best" in exported.stdout


@pytest.mark.slow
def test_the_report_gives_the_competitions_own_breakdowns(competition, tmp_path):
    out = tmp_path / "report"
    assert search_here("report", "--study", "mask-a", "--out", str(out), env=competition["env"]).returncode == 0
    page = (out / "index.html").read_text()
    study = optuna.load_study(study_name="mask-a", storage=f"sqlite:///{competition['home']}/studies.db")
    matrix = study.best_trial.user_attrs["confusion_matrix"]
    scores = part_scores(matrix)
    assert "<th>mask</th><th>gender</th><th>age</th>" in page
    assert "".join(f"<td>{scores[p]:.4f}</td>" for p in ("mask", "gender", "age")) in page
    for text in confused_parts(matrix, competition_class_names((30, 60))):
        assert html.escape(text) in page
    assert "125 images, 18 classes, 18 people" in page and "unreadable image" in page
    pictures = set(re.findall(r'<img src="([^"]+)"', page))
    assert {"predicted.png", "curves.png", "samples.png", "classes.png"} <= pictures
    assert (out / "samples.png").stat().st_size < 300_000  # a page's width of samples, not a row per class
    assert [cell for cell in re.findall(r"<td style='text-align:left'>([^<]*)</td>", page)] == ["complete"] * 2


def test_a_root_one_level_off_is_refused_in_one_line_naming_the_variable(competition):
    env = {**competition["env"], "MASK_DATA": str(competition["root"] / "images")}
    run = search_here(*RUN, "--set", "name=off-by-one", env=env)
    assert run.returncode == 1 and run.stderr.strip().splitlines() == [
        f"search: error: MASK_DATA (data.root) {competition['root'] / 'images'} is the images folder, and the "
        f"train.csv beside it (its corrected labels) would be ignored; give its parent, {competition['root']} "
        "(the layout is <root>/images/<id>_<gender>_<race>_<age>/mask1.jpg ... normal.jpg, with <root>/train.csv)"
    ]
    assert "off-by-one" not in optuna.get_all_study_names(f"sqlite:///{competition['home']}/studies.db")


def test_a_trial_that_learned_nothing_is_flagged_in_status_best_and_its_note(tmp_path):
    from search.run.notes import TrialPictures
    from search.store import AtomicArtifactStore

    names = competition_class_names((30, 60))
    collapsed = [[0] * 18 for _ in range(18)]
    for true in range(18):
        collapsed[true][4] = 3  # every image taken for mask/female/30-59
    collapsed[4][4], collapsed[7][7], collapsed[7][4] = 3, 1, 2
    url = f"sqlite:///{tmp_path}/studies.db"
    study = optuna.create_study(study_name="short", storage=url, direction="maximize")
    facts = {"source": "x", "class_names": list(names), "train_images": 10, "val_images": 54,
             "val_per_class": [3] * 18}  # fmt: skip
    study.set_user_attr("data_facts", json.dumps(facts))
    lr = {"lr": optuna.distributions.FloatDistribution(1e-5, 1.0, log=True)}
    attrs = {"confusion_matrix": collapsed, "per_class_f1": [0.0] * 18}
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-5}, distributions=lr, value=0.0023, user_attrs=attrs))
    env = {"SEARCH_HOME": str(tmp_path)}
    status = search_here("status", "--study", "short", env=env).stdout
    said = "predicts 'mask/female/30-59' for 98% of the validation images: it learned nothing"
    assert f"  trial 0 {said}" in status and "  no complete trial learned: train more epochs" in status
    assert json.loads(search_here("best", "--study", "short", env=env).stdout)["metrics"]["learned_nothing"] == said

    best = {"macro_f1": 0.0023, "accuracy": 0.07, "balanced_accuracy": 0.06, "macro_precision": 0.0,
            "macro_recall": 0.06, "per_class_f1": [0.0] * 18, "confusion_matrix": collapsed}  # fmt: skip
    result = TrainResult(best_epoch=1, best_metrics=best, history=[best] * 2, train_images_per_second=100.0,
                         checkpoint=None, device="cpu", class_names=tuple(names))  # fmt: skip

    trial = study.ask(lr)
    pictures = TrialPictures(AtomicArtifactStore(Path(tmp_path / "artifacts")))
    pictures.submit(trial, result, draw=False)
    pictures.wait()
    assert f"**This model {said}.**" in get_note(trial)
    study.tell(trial, state=TrialState.FAIL)
