"""A study file as data: frozen, validated pydantic models that import nothing that samples, prunes
or trains. The names they hold (sampler, pruner, the space's fields) are checked against their
registries by ``search.study.load``, in one step after parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from search.study.fields import apply
from search.study.space import SearchSpace
from training import (
    DEFAULT_OBJECTIVE,
    DataConfig,
    Frozen,
    ModelConfig,
    TrainConfig,
    TrainSettings,
    check_input_size,
    check_objective,
)


class Component(Frozen):
    """A sampler or pruner by name with its keyword options (checked by building it)."""

    model_config = Frozen.model_config | {"extra": "allow"}
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Budget(Frozen):
    n_trials: int = Field(20, ge=1)  # finished trials (complete + pruned) for the whole study
    timeout: float | None = Field(None, gt=0)  # seconds from the start of `search run`


class Retention(Frozen):
    keep_top_k: int = Field(3, ge=1)  # checkpoints kept: the best k complete trials


class FoldPruning(Frozen):
    """Cross-validated studies: a trial stops between folds when a one-sided Wilcoxon signed-rank
    test says, below ``p_threshold``, that its folds are worse than the best trial's (0: never).
    The default was chosen by ``benchmarks/fold_pruning.py`` (docs/benchmarks.md)."""

    p_threshold: float = Field(0.3, ge=0.0, lt=1.0)
    min_folds: int = Field(2, ge=1)


class Confirm(Frozen):
    """Once the search's budget is spent, the ``top`` leading configurations are each trained again
    with ``seeds`` further seeds (confirmation runs, outside the budget), until the top ones all are."""

    top: int = Field(3, ge=1)
    seeds: int = Field(2, ge=1)


class WarmStart(Frozen):
    """The best ``top`` complete trials of ``study`` (in the same storage) queued first."""

    study: str
    top: int = Field(3, ge=1)


class StudySpec(Frozen):
    """One study file, resolved: what to train, what to sample, how to search, for how long."""

    name: str
    seed: int = 0
    objective: str = DEFAULT_OBJECTIVE  # what the study ranks, prunes and picks by: a name of training.OBJECTIVES
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainSettings = Field(default_factory=TrainSettings)
    space: SearchSpace
    sampler: Component = Field(default_factory=lambda: Component(name="tpe"))
    pruner: Component = Field(default_factory=lambda: Component(name="median"))
    budget: Budget = Field(default_factory=Budget)
    checkpoints: Retention = Field(default_factory=Retention)
    fold_pruning: FoldPruning = Field(default_factory=FoldPruning)
    confirm: Confirm | None = None
    enqueue: list[dict[str, Any]] = Field(default_factory=list)
    warm_start: WarmStart | None = None
    _variables: dict[str, str] = PrivateAttr(default_factory=dict)  # key -> the ${VARIABLE} its value came from
    _objective = field_validator("objective")(check_objective)

    def named(self, key: str) -> str:
        """``key`` as its user set it: with the environment variable its value came from, if one did
        (``MASK_DATA (data.root)``), for a message to name what the user typed."""
        variable = self._variables.get(key)
        return f"{variable} ({key})" if variable else key

    def epochs_per_fold(self) -> int:
        """The most epochs a trial of this study trains: cross-validated, fold k's epoch e is the
        trial's step k × this + e, the same step for every trial (a pruner compares like with like)."""
        for param in self.space.every_param():
            if param.path == "train.epochs":
                found = param.distribution
                return int(max(found.choices) if found.choices is not None else found.high)
        return self.train.epochs

    @model_validator(mode="after")
    def _input_size_fits_the_model(self, info: ValidationInfo) -> StudySpec:
        check_input_size(self.model, self.data, info)
        return self

    def trial_config(self, params: dict[str, Any], output_dir: Path | None) -> TrainConfig:
        """The training config of one trial: the study's settings with its sampled ``params`` put in
        their fields (``params`` by column, as a trial records them)."""
        settings = apply({"train": self.train.model_dump(), "model": self.model.model_dump()}, params)
        return TrainConfig.model_validate(
            {**settings["train"], "model": settings["model"], "data": self.data, "seed": self.seed,
             "objective": self.objective, "output_dir": output_dir}
        )  # fmt: skip
