"""``search notebook``: a Jupyter notebook (nbformat) written from a study. Its cells load the study
from its storage and artifacts and compute everything again from there with ``search.results``, so
a user can change any cell; ``execute`` runs it top to bottom in a real kernel (nbclient, ipykernel).
"""

from __future__ import annotations

import subprocess
from importlib import import_module
from pathlib import Path
from types import ModuleType

from sqlalchemy.engine import make_url

from training import ConfigError, DataError, SearchServiceError, replacing

NEEDS = ("nbformat", "nbclient", "ipykernel", "pandas", "plotly")
INSTALL = "pip install 'search-service[notebook]'"
CELL_TIMEOUT = 900  # seconds; the slowest cell decodes the data or predicts the test images


def module(name: str) -> ModuleType:
    """A module of the notebook extra; one line saying what to install where it is missing."""
    try:
        return import_module(name)
    except ImportError:
        raise ConfigError(f"{name} is not installed: a notebook needs {', '.join(NEEDS)}; run {INSTALL}") from None


def _opening(name: str, out: Path, test_images: Path | None) -> str:
    test = "\n4. **Test predictions**: the best model on the test images, and the submission CSV."
    test = test if test_images else ""
    return f"""# Study `{name}`

Open it with `jupyter lab {out.name}` (or `jupyter notebook {out.name}`), in the environment where the
search service is installed with its notebook extra (`{INSTALL}`). Every cell reads the study from its
storage and computes again from there with `search.results`: change any cell, or add one.

1. **The problem and the data**: classes, images, people, the split, class counts, samples, what was left out.
2. **The search**: every trial, Optuna's own plots, the leading configurations.
3. **The best model**: per-class scores, the confusion matrix, the validation images it gets wrong.{test}"""


def _imports(storage: str) -> str:
    """The first cell's imports and display settings: four significant digits in tables, and plotly
    figures that show both in JupyterLab and in the HTML ``jupyter nbconvert`` writes (plotly.js
    inside, so the page needs no network)."""
    needs_os = "import os\n\n" if make_url(storage).password else ""
    return (
        f"{needs_os}import optuna.visualization as plots\nimport pandas as pd\nimport plotly.io\n\n"
        "from search import results\n\n"
        'pd.set_option("display.float_format", "{:.4g}".format)\n'
        'plotly.io.renderers.default = "plotly_mimetype+notebook"'
    )


def _storage_line(storage: str) -> str:
    """How the first cell names the storage: the URL, or, where it holds a password, the variable
    that holds the URL (a notebook is shared; a password in it would be too)."""
    if make_url(storage).password:
        return 'storage = os.environ["SEARCH_STORAGE"]  # the URL has a password: set it in SEARCH_STORAGE'
    return f"storage = {storage!r}"


def _cells(name: str, storage: str, artifacts: Path, competition: bool, test: tuple[Path, Path | None] | None):
    """(kind, source) of every cell, in order."""
    parts = [("code", "results.part_counts(r)")] if competition else []
    part_scores = [("code", "results.part_table(best)")] if competition else []
    cells = [
        ("code", f"{_imports(storage)}\n\n{_storage_line(storage)}\n"
                 f"r = results.open_results({name!r}, storage, {str(artifacts)!r})\nr"),
        ("markdown", "## 1. The problem and the data\nThe facts as the study's runs found the data, then the images "
                     "per class on each side of the split (a person's images stay on one side)."),
        ("code", 'print("\\n".join(r.facts.lines()))'),
        ("code", "results.people(r)"),
        ("code", "results.class_counts(r)"),
        *parts,
        ("code", "results.class_chart(r)"),
        ("code", "results.sample_grid(r)"),
        ("code", "results.left_out(r)"),
        ("markdown", "## 2. The search\nEvery trial (Optuna's table), then Optuna's own plots of the study."),
        ("code", "results.trials_table(r)"),
        ("code", "plots.plot_optimization_history(r.study, target_name=r.label)"),
        ("code", "plots.plot_intermediate_values(r.study)"),
        ("code", "plots.plot_parallel_coordinate(r.study, target_name=r.label)"),
        ("code", "results.importances(r)"),
        ("code", "results.leaders(r)"),
        ("markdown", "## 3. The best model\nIts stored checkpoint predicts the validation split again, on the CPU."),
        ("code", "best = results.validation_predictions(r)\n"
                 'print(f"trial {best.trial}: {r.label} {best.metrics()[r.objective]:.4f} "\n'
                 '      f"on {len(best.labels)} validation images")'),
        ("code", "results.per_class_scores(best)"),
        *part_scores,
        ("code", "matrix = results.confusion(best)  # a table: true classes as rows, predicted as columns\n"
                 "results.confusion_picture(best)"),
        ("code", "wrong = results.mistakes(best)\nwrong"),
        ("code", "results.mistakes_picture(best, wrong)"),
    ]  # fmt: skip
    if test is not None:
        images, info = test
        cells += [
            ("markdown", "## 4. Test predictions\nThe best trial's checkpoint, exported as `search export` writes it, "
                         "predicts the test images into the CSV `search predict` writes."),
            ("code", f'checkpoint = results.export_best(r, "{name}-best.safetensors")\n'
                     f"test = results.submission(checkpoint, {str(images)!r}, \"{name}-submission.csv\", "
                     f"{str(info) if info else None!r})\n"
                     f'print(f"{{len(test)}} rows in {name}-submission.csv")\ntest'),
            ("code", "results.predicted_shares(r, test, best)"),
        ]  # fmt: skip
    return cells


def images_and_info(folder: Path) -> tuple[Path, Path | None]:
    """(the image folder, the info CSV): the competition's ``eval/images`` and ``eval/info.csv``, else
    a plain folder of images."""
    if not folder.is_dir():
        raise DataError(f"--test-images {folder} is not a folder; give the folder of the test images")
    if (folder / "info.csv").is_file() and (folder / "images").is_dir():
        return (folder / "images").resolve(), (folder / "info.csv").resolve()
    return folder.resolve(), None


def write_notebook(name: str, storage: str, artifacts: Path, out: Path, *, competition: bool,
                   test_images: Path | None = None, force: bool = False) -> Path:  # fmt: skip
    """The notebook of study ``name`` at ``out``, written atomically."""
    nbformat = module("nbformat")
    for needed in NEEDS[1:]:
        module(needed)
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; pass --force to overwrite it")
    test = images_and_info(test_images) if test_images is not None else None
    new = {"code": nbformat.v4.new_code_cell, "markdown": nbformat.v4.new_markdown_cell}
    cells = [new["markdown"](_opening(name, out, test_images))]
    cells += [new[kind](source) for kind, source in _cells(name, storage, artifacts.resolve(), competition, test)]
    book = nbformat.v4.new_notebook(cells=cells)
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    with replacing(out, "notebook") as temporary:
        nbformat.write(book, str(temporary))
    return out


def execute(path: Path) -> None:
    """Run the notebook at ``path`` top to bottom in a new ipykernel, in its own folder, and write it
    back with its outputs; a cell that fails is one line naming it."""
    nbformat, nbclient = module("nbformat"), module("nbclient")
    book = nbformat.read(str(path), as_version=4)
    client = nbclient.NotebookClient(book, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent.resolve())}})  # fmt: skip
    try:
        client.execute(stderr=subprocess.DEVNULL)  # the kernel's start-up warnings; a cell's errors come as outputs
    except nbclient.exceptions.CellExecutionError as error:
        raise SearchServiceError(
            f"{path}: a cell failed with {error.ename}: {_last_line(error.evalue)}; open it to see which and why"
        ) from None
    finally:
        with replacing(path, "notebook") as temporary:
            nbformat.write(book, str(temporary))


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
