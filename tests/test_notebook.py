"""``search notebook`` on a competition user's study: the notebook is written from the study, run top
to bottom in a real ipykernel (nbclient), and its outputs hold what the study and the data hold."""

from __future__ import annotations

import csv
import re
import sys

import nbformat
import numpy as np
import optuna
import pytest

from tests.conftest import search_here, write_competition, write_image
from tests.test_competition import RUN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """A two-trial study on competition data, a test folder with its info.csv, and the notebook of
    the study written and executed by ``search notebook --execute``."""
    base = tmp_path_factory.mktemp("notebook")
    root = write_competition(base / "train")
    rng = np.random.default_rng(9)
    ids = [f"{k:03d}.jpg" for k in range(13)]
    for k, name in enumerate(ids):
        write_image(base / "eval" / "images" / name, rng, (40 * k % 255, 150, 120))
    (base / "eval" / "info.csv").write_text("ImageID,ans\n" + "".join(f"{name},0\n" for name in reversed(ids)))
    env = {"SEARCH_HOME": str(base / "home"), "MASK_DATA": str(root)}
    run = search_here(*RUN, "--quiet", "--set", "name=mask-nb", env=env)
    assert run.returncode == 0, run.stderr
    out = base / "results" / "mask.ipynb"
    out.parent.mkdir()
    made = search_here("notebook", "--study", "mask-nb", "--out", str(out), "--test-images", str(base / "eval"),
                       "--execute", env=env)  # fmt: skip
    assert made.returncode == 0, made.stderr
    study = optuna.load_study(study_name="mask-nb", storage=f"sqlite:///{base}/home/studies.db")
    return {"book": nbformat.read(str(out), as_version=4), "out": out, "study": study, "ids": ids, "env": env}


def _text(cell) -> str:
    """What a code cell printed or showed as text."""
    parts = []
    for output in cell.outputs:
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _cell(book, source_start: str):
    return next(c for c in book.cells if c.cell_type == "code" and c.source.startswith(source_start))


def test_every_cell_ran_without_an_error(executed):
    code = [c for c in executed["book"].cells if c.cell_type == "code"]
    assert len(code) >= 20
    for cell in code:
        assert cell.execution_count is not None, cell.source
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
        assert cell.outputs, f"no output: {cell.source}"


def test_the_data_section_holds_the_datas_counts(executed):
    book = executed["book"]
    facts = _text(_cell(book, 'print("\\n".join(r.facts.lines()))'))
    assert "data: 125 images, 18 classes, 18 people" in facts  # 18 × 7, less the truncated image
    assert "left out: 1 x unreadable image" in facts
    counts = _cell(book, "results.class_counts(r)")
    table = counts.outputs[0]["data"]["text/plain"]
    assert "mask/male/<30" in table and "incorrect/female/>=60" in table
    # the table's first block: class, its three parts, then train, validation and all
    counts = {}
    for line in table.splitlines():
        found = re.match(r"^(\S.*?/\S+)\s.*?(\d+)\s+(\d+)\s+(\d+)\s+\\?$", line)
        if found and found[1] not in counts:
            counts[found[1]] = [int(found[k]) for k in (2, 3, 4)]
    assert len(counts) == 18
    assert all(train + val == both for train, val, both in counts.values())
    assert sum(both for _, _, both in counts.values()) == 125
    val_images = int(re.search(r"and (\d+) validation images", facts)[1])
    assert sum(val for _, val, _ in counts.values()) == val_images
    parts = _text(_cell(book, "results.part_counts(r)"))
    assert "gender" in parts and "female" in parts and "30-59" in parts
    assert "image/png" in _cell(book, "results.sample_grid(r)").outputs[0]["data"]
    left = _text(_cell(book, "results.left_out(r)"))
    assert "unreadable image" in left and "000002_male_Asian_45" in left


def test_the_best_models_figures_are_the_studys(executed):
    book, study = executed["book"], executed["study"]
    again = _text(_cell(book, "best = results.validation_predictions(r)"))
    # the stored checkpoint, predicting the validation split again, scores what its trial recorded
    assert f"trial {study.best_trial.number}: macro-F1 {study.best_value:.4f} on " in again
    leaders = _text(_cell(book, "results.leaders(r)"))
    assert f"{study.best_value:.4g}" in leaders
    assert "image/png" in _cell(book, "matrix = results.confusion(best)").outputs[0]["data"]
    wrong = _text(_cell(book, "wrong = results.mistakes(best)"))
    assert "→" in wrong and "probability" in wrong
    assert "image/png" in _cell(book, "results.mistakes_picture(best, wrong)").outputs[0]["data"]
    history = _cell(book, "plots.plot_optimization_history(")
    shown = [o.get("data", {}) for o in history.outputs]  # for JupyterLab, and for the HTML nbconvert writes
    assert any("application/vnd.plotly.v1+json" in d for d in shown) and any("text/html" in d for d in shown)


def test_the_submission_is_the_csv_search_predict_writes(executed):
    csv_path = executed["out"].parent / "mask-nb-submission.csv"
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["ImageID"] for row in rows] == list(reversed(executed["ids"]))  # info.csv's order
    assert all(0 <= int(row["ans"]) < 18 for row in rows)
    shown = _text(_cell(executed["book"], "checkpoint = results.export_best("))
    assert "13 rows in mask-nb-submission.csv" in shown
    assert "ImageID" in shown and all(name in shown for name in executed["ids"])
    shares = _text(_cell(executed["book"], "results.predicted_shares("))
    assert "test, predicted" in shares and "validation, true" in shares


def test_a_missing_notebook_package_is_one_line_naming_the_install(executed, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nbclient", None)
    out = tmp_path / "x.ipynb"
    made = search_here("notebook", "--study", "mask-nb", "--out", str(out), env=executed["env"])
    assert made.returncode != 0 and not out.exists()
    assert made.stderr.strip().splitlines()[-1].endswith("run pip install 'search-service[notebook]'")
    assert "nbclient is not installed" in made.stderr and "Traceback" not in made.stderr


def test_the_executed_notebook_renders_to_html_with_its_plots_inside(executed):
    from nbconvert import HTMLExporter

    page, _ = HTMLExporter().from_notebook_node(executed["book"])
    assert page.count("Plotly.newPlot") >= 4  # history, intermediate values, parallel coordinates, importances
    assert re.search(r"\* plotly\.js v\d", page)  # plotly.js itself is in the page: it shows offline
    assert page.count("data:image/png;base64") >= 5


def test_an_existing_notebook_or_a_missing_test_folder_is_one_line(executed, tmp_path):
    env = executed["env"]
    taken = search_here("notebook", "--study", "mask-nb", "--out", str(executed["out"]), env=env)
    assert taken.returncode != 0 and "already exists; pass --force to overwrite it" in taken.stderr
    out = tmp_path / "y.ipynb"
    missing = search_here("notebook", "--study", "mask-nb", "--out", str(out), "--test-images", str(tmp_path / "no"),
                          env=env)  # fmt: skip
    assert missing.returncode != 0 and not out.exists()
    assert missing.stderr.strip().splitlines()[-1].endswith("is not a folder; give the folder of the test images")
    # the same mistake is the same exit code as in search predict
    predict = search_here("predict", "--checkpoint", str(out), "--images", str(tmp_path / "no"), "--out",
                          str(tmp_path / "p.csv"), env=env)  # fmt: skip
    assert predict.returncode == missing.returncode
