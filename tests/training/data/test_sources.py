from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_image
from training import DataConfig, DataError
from training.data.cache import decode_images
from training.data.competition import competition_class_names, competition_layout
from training.data.prepare import prepare_data
from training.data.sources import csv_list, image_folder, load_source


def test_competition_layout_labels_people_and_skips_hidden_files(competition_root):
    data = competition_layout(competition_root, (30, 60))
    assert len(data.paths) == 12 * 7  # hidden files and .DS_Store are not images of the set
    assert not any("/." in p.replace(str(competition_root), "") for p in data.paths)
    assert {p.rsplit(".", 1)[1] for p in data.paths} == {"jpg", "jpeg", "png"}
    by_path = dict(zip(data.paths, data.labels))
    # 000000: male, age 20 → band 0; mask1 → worn (0): label 0; incorrect → 6; normal → 12
    person0 = [p for p in data.paths if "000000_male" in p]
    assert sorted(by_path[p] for p in person0) == [0, 0, 0, 0, 0, 6, 12]
    # 000005: female (odd), age 55 → band 1: worn 0*6+1*3+1 = 4, incorrect 10, normal 16
    person5 = [p for p in data.paths if "000005_female" in p]
    assert sorted({int(by_path[p]) for p in person5}) == [4, 10, 16]
    # 000011: female, age 97 → band 2: worn = 5
    assert {int(by_path[p]) for p in data.paths if "000011_" in p} == {5, 11, 17}
    assert len(set(data.groups)) == 12
    assert data.class_names[0] == "mask/male/<30" and data.class_names[17] == "no mask/female/>=60"


def test_competition_age_bounds_are_configurable(competition_root):
    data = competition_layout(competition_root, (25, 40))
    person2 = {int(label) for p, label in zip(data.paths, data.labels) if "000002_male_Asian_34" in p}
    assert person2 == {1, 7, 13}  # age 34 is band 1 under (25, 40)
    assert competition_class_names((25, 40))[1] == "mask/male/25-39"


def test_competition_train_csv_limits_the_folders_and_its_rows_say_gender_and_age(competition_root):
    header = "id,gender,race,age,path\n"
    # 000001's folder says female, 27; its row is corrected to male, 65 (the competition's known mislabels)
    (competition_root / "train.csv").write_text(
        header + "000000,male,Asian,20,000000_male_Asian_20\n000001,Male,Asian,65,000001_female_Asian_27\n"
    )
    data = competition_layout(competition_root, (30, 60))
    assert len(data.paths) == 14
    assert set(data.groups) == {"000000", "000001"}
    by_person = {g: sorted(int(x) for x in data.labels[data.groups == g]) for g in ("000000", "000001")}
    assert by_person == {"000000": [0, 0, 0, 0, 0, 6, 12], "000001": [2, 2, 2, 2, 2, 8, 14]}  # male, 60 and over

    for text, said in [
        ("id,path\n000000,000000_male_Asian_20\n", "missing column(s) ['age', 'gender']; the competition's train.csv"),
        (header + "000000,male,Asian,20,000000_male_Asian_20\n000001,?,Asian,x,000001_female_Asian_27\n",
         "train.csv:3: gender '?' and age 'x'; expected male or female and whole years"),
        (header + "000000,male,Asian,20,\n", "train.csv:2: empty path; fix or delete the row"),
        (header + "000001,female,Asian,27,000001_female_Asian_27\n000001,male,Asian,65,000001_female_Asian_27\n",
         "train.csv:3: 000001_female_Asian_27 is listed again (first at line 2); keep one row per person"),
    ]:  # fmt: skip
        (competition_root / "train.csv").write_text(text)
        with pytest.raises(DataError, match=re.escape(said)):
            competition_layout(competition_root, (30, 60))


def test_image_folder_labels_by_subfolder(folder_dataset):
    data = image_folder(folder_dataset)
    assert data.class_names == ("cat", "dog", "fox")
    assert np.bincount(data.labels).tolist() == [24, 12, 6]
    assert data.groups is None


def test_csv_source_reads_groups_and_rejects_bad_rows(folder_dataset, tmp_path):
    rows = ["path,label,group"] + [f"folder/cat/{i}.{'png' if i % 2 else 'jpg'},cat,p{i // 2}" for i in range(6)]
    good = tmp_path / "labels.csv"
    good.write_text("\n".join(rows + ["folder/dog/1.png,dog,p9"]) + "\n")
    data = csv_list(good)
    assert data.class_names == ("cat", "dog") and len(data.paths) == 7
    assert data.groups.tolist()[:2] == ["p0", "p0"]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nfolder/cat/0.jpg,cat\nfolder/cat/1.png,\n")
    with pytest.raises(DataError, match=r"bad.csv:3: empty path or label"):
        csv_list(bad)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"source": "folder", "root": "/nowhere"}, "/nowhere does not exist"),
        ({"source": "competition", "root": "/nowhere"}, "/nowhere does not exist"),
        ({"source": "csv", "root": "/nowhere.csv"}, "/nowhere.csv does not exist"),
    ],
)
def test_missing_roots_name_the_path(config, message):
    with pytest.raises(DataError, match=message):
        load_source(DataConfig.model_validate(config))


def test_empty_root_and_empty_class_stop_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no class subfolders"):
        image_folder(tmp_path / "empty")
    (tmp_path / "one" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"class folder .*one/a has no images"):
        image_folder(tmp_path / "one")


def test_demo_is_long_tailed_real_digits_read_through_image_folder(tmp_path):
    data = load_source(DataConfig(source="demo", cache_dir=tmp_path))
    counts = np.bincount(data.labels)
    assert len(counts) == 10 and counts.max() >= 10 * counts.min()
    assert all(p.endswith(".png") and str(tmp_path) in p for p in data.paths)
    again = load_source(DataConfig(source="demo", cache_dir=tmp_path))
    assert again.paths == data.paths  # written once, read back the same


def test_corrupt_image_is_skipped_named_and_counted(competition_root):
    data = competition_layout(competition_root, (30, 60))
    decoded = decode_images(data, (16, 16))
    assert len(decoded.skipped) == 1 and "000003_female_Asian_41/mask2" in decoded.skipped[0]
    assert len(decoded.labels) == len(data.paths) - 1
    notes = prepare_data(DataConfig(source="competition", root=competition_root, image_size=16), 0).notes
    assert any("mask2" in note and "unreadable" in note for note in notes)
    assert any("skipped 1 unreadable" in note for note in notes)


def test_a_listed_file_that_is_not_there_is_skipped_in_words_without_opencvs_own_warning(
    folder_dataset, tmp_path, capfd
):
    listing = tmp_path / "labels.csv"
    rows = [f"folder/{c}/{i}.png,{c}" for c in ("cat", "dog") for i in (1, 3, 5)]
    listing.write_text("\n".join(["path,label", *rows, "folder/dog/gone.png,dog"]) + "\n")
    decoded = decode_images(csv_list(listing), (16, 16))
    assert decoded.skipped == (str(tmp_path / "folder/dog/gone.png"),)
    notes = prepare_data(DataConfig(source="csv", root=listing, image_size=16, val_ratio=0.5), 0).notes
    assert f"skipping {tmp_path / 'folder/dog/gone.png'}: no such file" in notes
    assert "[ WARN" not in capfd.readouterr().err  # OpenCV's own line (findDecoder imread_ ...) is not added


def test_data_of_one_class_is_refused_in_one_line(folder_dataset, tmp_path):
    """A classifier of one class trains to macro-F1 1.0 and means nothing: refused before it starts."""
    (tmp_path / "one").mkdir()
    (folder_dataset / "dog").rename(tmp_path / "one" / "dog")
    with pytest.raises(DataError, match=re.escape(f"all 12 images in {tmp_path / 'one'} are of one class, 'dog'; ")):
        load_source(DataConfig(source="folder", root=tmp_path / "one"))
    rows = "path,label\n" + "".join(f"one/dog/{i}.{'png' if i % 2 else 'jpg'},dog\n" for i in range(3))
    (tmp_path / "labels.csv").write_text(rows)
    with pytest.raises(DataError, match="all 3 images in .*labels.csv are of one class, 'dog'; a classifier needs"):
        load_source(DataConfig(source="csv", root=tmp_path / "labels.csv"))


def test_a_competition_root_one_level_off_is_refused_naming_the_folder_to_give(competition_root, monkeypatch):
    (competition_root / "train.csv").write_text("id,gender,race,age,path\n000000,male,Asian,20,000000_male_Asian_20\n")
    images = competition_root / "images"
    beside = f"is the images folder, and the train.csv beside it (its corrected labels) would be ignored; give its parent, {competition_root}"  # noqa: E501
    with pytest.raises(DataError, match=re.escape(beside)):
        competition_layout(images, (30, 60))
    person = f"is one person's folder; give the competition's root, {competition_root}"
    with pytest.raises(DataError, match=re.escape(person)):
        competition_layout(images / "000000_male_Asian_20", (30, 60))
    (competition_root / "train.csv").unlink()  # an images folder with nothing above it: its folder names say it all
    assert len(competition_layout(images, (30, 60)).paths) == 12 * 7
    # a root with its own train.csv is the root, whatever lies above it; "." too
    (competition_root / "train.csv").write_text("id,gender,race,age,path\n000000,male,Asian,20,000000_male_Asian_20\n")
    (competition_root.parent / "train.csv").write_text("somebody else's\n")
    monkeypatch.chdir(competition_root)
    assert len(competition_layout(Path("."), (30, 60)).paths) == 7
    (competition_root / "empty" / "images").mkdir(parents=True)
    layout = r"no images found in .*, which should hold <root>/images/<id>_<gender>_<race>_<age>/mask1.jpg"
    with pytest.raises(DataError, match=layout):
        load_source(DataConfig(source="competition", root=competition_root / "empty", image_size=16))


def test_the_facts_name_people_the_split_and_every_item_left_out_by_kind(competition_root):
    images = competition_root / "images"
    (images / "not_a_person").mkdir()
    write_image(images / "000000_male_Asian_20" / "mask6.jpg", np.random.default_rng(0), (1, 2, 3))
    people = [(f"{i:06d}", ("male", "female")[i % 2], 20 + 7 * i) for i in range(11)] + [("000099", "male", 30)]
    rows = [f"{pid},{gender},Asian,{age},{pid}_{gender}_Asian_{age}" for pid, gender, age in people]
    (competition_root / "train.csv").write_text("\n".join(["id,gender,race,age,path", *rows]) + "\n")
    listing = competition_layout(competition_root, (30, 60))
    assert sorted((kind, path.rsplit("/", 1)[1]) for kind, path in listing.left_out) == [
        ("missing folder", "000099_male_Asian_30"),
        ("unlisted folder", "000011_female_Asian_97"),
        ("unlisted folder", "not_a_person"),
        ("unnamed image", "mask6.jpg"),
    ]

    prepared = prepare_data(DataConfig(source="competition", root=competition_root, image_size=16), 0)
    facts = prepared.facts
    assert (facts.people, facts.train_people + facts.val_people) == (11, 11) and facts.val_people >= 1
    assert facts.images == 11 * 7 - 1 and sum(facts.val_per_class) == facts.val_images == len(prepared.val_idx)
    counted = {kind.kind: kind.count for kind in facts.left_out}
    assert counted == {"unlisted folder": 2, "missing folder": 1, "unnamed image": 1, "unreadable image": 1}
    text = "\n".join(facts.lines())
    assert f"11 people, {facts.val_people} of them for validation, 5 items left out" in text
    assert "left out: 1 x unreadable image (cannot be decoded): " in text and "000003_female_Asian_41/mask2" in text
    assert "left out: 2 x unlisted folder (not listed in train.csv)" in text
    assert any("skipping unreadable image" in note and "mask2" in note for note in prepared.notes)
    assert type(facts).from_json(facts.to_json()) == facts
    assert [type(facts).from_json(text) for text in ("null", "[1]", "{}", None)] == [None] * 4
