"""The best model of a study, as a notebook's cells look at it: its validation predictions made
again from its stored checkpoint, per-class scores, the confusion matrix, the images it gets wrong,
and its predictions on test images as ``search predict`` writes them."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from search.handover import export_trial
from search.ranking import chosen
from search.record import TrialRecord
from search.report import figures
from search.report.parts import part_scores
from search.results.study import Picture, StudyResults
from search.store import not_in_store, stored
from search.submission import write_predictions
from training import SearchServiceError


@dataclass
class Predictions:
    """A trial's model on the validation split: class probabilities, true labels, which images."""

    trial: int
    probs: np.ndarray
    labels: np.ndarray
    images: np.ndarray  # the validation images, as the model saw them
    class_names: tuple[str, ...]

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(1)

    def metrics(self) -> dict[str, float]:
        """Every objective the project computes (macro-F1, accuracy, ...), as the trial's epochs computed them."""
        from training import classification_metrics

        found = classification_metrics(self.labels, self.probs)
        return {name: value for name, value in found.items() if isinstance(value, float)}


def validation_predictions(results: StudyResults, trial: int | None = None) -> Predictions:
    """Trial ``trial``'s stored checkpoint (the best trial's by default) predicting the validation
    split again, on the CPU."""
    from training import predict_validation

    chosen_trial = chosen(results.study, trial)
    artifact = TrialRecord.of(chosen_trial).checkpoint_artifact
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "model.safetensors"
        if not stored(results.store, artifact, copy_to=checkpoint):
            why = not_in_store(results.store) if artifact else "it stored none"
            raise SearchServiceError(f"trial {chosen_trial.number}'s checkpoint is {why}; choose another trial")
        probs, labels = predict_validation(checkpoint, results.spec.trial_config(chosen_trial.params, None))
    images = results.data.decoded.images[results.data.val_idx]
    return Predictions(chosen_trial.number, probs, labels, images, results.class_names)


def per_class_scores(predictions: Predictions) -> pd.DataFrame:
    """Precision, recall, F1 and the number of validation images of every class (scikit-learn's)."""
    from sklearn.metrics import precision_recall_fscore_support

    classes = np.arange(len(predictions.class_names))
    scores = precision_recall_fscore_support(predictions.labels, predictions.predicted, labels=classes, zero_division=0)
    names = ["precision", "recall", "F1", "images"]
    return pd.DataFrame(dict(zip(names, scores)), index=pd.Index(predictions.class_names, name="class"))


def confusion(predictions: Predictions) -> pd.DataFrame:
    """The confusion matrix: true classes as rows, predicted as columns."""
    from sklearn.metrics import confusion_matrix

    names = pd.Index(predictions.class_names)
    matrix = confusion_matrix(predictions.labels, predictions.predicted, labels=np.arange(len(names)))
    return pd.DataFrame(matrix, index=names.rename("true"), columns=names.rename("predicted"))


def confusion_picture(predictions: Predictions) -> Picture:
    from search.pictures import confusion_png

    return Picture(confusion_png, confusion(predictions).to_numpy(), predictions.class_names)


def part_table(predictions: Predictions) -> pd.DataFrame:
    """Each part of the competition's label (mask, gender, age band) scored as a classifier of its own."""
    scores = part_scores(confusion(predictions).to_numpy())
    return pd.DataFrame({"macro-F1": scores}).rename_axis("part")


def mistakes(predictions: Predictions, pairs: int = 3, per_pair: int = 6) -> pd.DataFrame:
    """The validation images the model gets wrong, ``per_pair`` of each of the ``pairs`` most
    confused (true, predicted) pairs, most confident first: each with its classes and probability."""
    matrix = confusion(predictions).to_numpy(copy=True)
    np.fill_diagonal(matrix, 0)
    order = [divmod(int(i), matrix.shape[1]) for i in np.argsort(-matrix, axis=None, kind="stable")[:pairs]]
    rows = []
    for true, wrong in ((a, b) for a, b in order if matrix[a, b] > 0):
        found = np.flatnonzero((predictions.labels == true) & (predictions.predicted == wrong))
        found = found[np.argsort(-predictions.probs[found, wrong], kind="stable")][:per_pair]
        rows += [{"image": int(i), "true": predictions.class_names[true], "predicted": predictions.class_names[wrong],
                  "probability": float(predictions.probs[i, wrong]), "pair": f"{predictions.class_names[true]} → "
                  f"{predictions.class_names[wrong]} ({matrix[true, wrong]}×)"} for i in found]  # fmt: skip
    return pd.DataFrame(rows, columns=["image", "true", "predicted", "probability", "pair"])


def mistakes_picture(predictions: Predictions, table: pd.DataFrame) -> Picture | str:
    """The images of ``mistakes``' table, a row per confused pair, each with its predicted probability."""
    if table.empty:
        return "The model gets every validation image right."
    groups = list(table.groupby("pair", sort=False))
    rows = [(pair, predictions.images[group["image"].to_numpy()]) for pair, group in groups]
    captions = [[f"p={p:.2f}" for p in group["probability"]] for _, group in groups]
    per_row = max(len(group) for _, group in groups)
    return Picture(lambda r, path: figures.image_grid_png(r, path, per_row=per_row, captions=captions), rows)


# -- test predictions -----------------------------------------------------------------------------


def export_best(results: StudyResults, out: str | Path, trial: int | None = None) -> Path:
    """Trial ``trial``'s stored checkpoint (the best's by default) written to ``out``, as ``search export`` does."""
    export_trial(results.study, results.store, Path(out), number=trial, force=True)
    return Path(out)


def submission(
    checkpoint: str | Path, images: str | Path, out: str | Path, info: str | Path | None = None
) -> pd.DataFrame:
    """The submission CSV ``search predict`` writes for ``images`` (in ``info``'s order and format
    when it is given), read back."""
    write_predictions([Path(checkpoint)], Path(images), Path(out), info=Path(info) if info else None,
                      quiet=True, force=True)  # fmt: skip
    return pd.read_csv(out)


def predicted_shares(results: StudyResults, table: pd.DataFrame, predictions: Predictions) -> pd.DataFrame:
    """Each class's share of the test predictions against its share of the validation split, true
    and predicted: a class the test set gets far more or less of than validation is worth a look."""
    names = results.class_names
    column = "ans" if "ans" in table else "label"
    test = np.bincount(table[column].to_numpy(dtype=int), minlength=len(names))
    true = np.bincount(predictions.labels, minlength=len(names))
    predicted = np.bincount(predictions.predicted, minlength=len(names))
    return pd.DataFrame(
        {"test, predicted": test / test.sum(), "validation, true": true / true.sum(),
         "validation, predicted": predicted / predicted.sum()},
        index=pd.Index(names, name="class"),
    ).round(4)  # fmt: skip
