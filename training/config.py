"""Typed, frozen configuration of one training run; validated once, when it is built."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# The names a study file may use, with the config fields each one reads (a study may sample only
# these under that name). The implementations (``training.losses.LOSSES``,
# ``training.schedulers.SCHEDULERS``) have exactly these keys; the tables live here, without torch,
# so a study file is checked before anything heavy is imported.
LOSS_PARAMS: dict[str, set[str]] = {
    "cross_entropy": {"class_weights"},
    "focal": {"focal_gamma", "class_weights"},
    "label_smoothing": {"smoothing", "class_weights"},
    "f1": set(),
}
SCHEDULER_PARAMS: dict[str, set[str]] = {
    "step": {"step_size", "step_gamma", "warmup_steps"},
    "cosine": {"eta_min", "t_max", "warmup_steps"},
    "plateau": {"plateau_factor", "plateau_patience", "warmup_steps"},
}

# The metrics a study may rank its trials by (its ``objective``), each computed from an epoch's
# validation predictions, higher better, with the words every output shows it by.
OBJECTIVES: dict[str, str] = {
    "macro_f1": "macro-F1",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "weighted_f1": "weighted F1",
    "worst_class_f1": "worst-class F1",
    "roc_auc": "one-vs-rest ROC-AUC",
}
DEFAULT_OBJECTIVE = "macro_f1"  # the competition's score, and what every study ranked by before the setting

# Validation context that leaves out the checks needing timm (model and optimizer names): it takes
# seconds to import, so a study file is checked without it first and its other typos answered at once.
WITHOUT_TIMM = {"timm": False}


def _timm_checks(info: ValidationInfo) -> bool:
    return (info.context or {}).get("timm", True)


def check_input_size(model: ModelConfig, data: DataConfig, info: ValidationInfo) -> None:
    """A timm model whose input size is fixed (ViT, DeiT, Swin, ...) takes only that size: said once
    when the configuration is read, not by every trial's first batch."""
    if not _timm_checks(info):
        return
    import timm

    cfg = timm.get_pretrained_cfg(model.name)
    if cfg is None or not cfg.fixed_input_size:
        return
    fixed = tuple(cfg.input_size[1:])
    if fixed != tuple(data.image_size):
        size = fixed[0] if fixed[0] == fixed[1] else list(fixed)
        raise ValueError(
            f"model.name = {model.name!r} takes only {fixed[0]}x{fixed[1]} images (a fixed input size in timm), "
            f"data.image_size is {data.image_size[0]}x{data.image_size[1]}: set data.image_size: {size} or "
            "choose a model without a fixed input size"
        )


def check_cuda_graphs(on: bool, info: ValidationInfo) -> bool:
    """``cuda_graphs`` replays the eager model's own kernels; ``torch.compile`` makes other ones (and
    its CUDA graphs, mode ``reduce-overhead``, do not accumulate gradients: pytorch/pytorch#169545)."""
    if on and info.data.get("compile"):
        raise ValueError("cannot be on with train.compile: turn one of them off")
    return on


def registered(kind: str, name: str, registry: dict) -> str:
    """``name`` if the registry has it; else an error that lists the names it has."""
    if name not in registry:
        raise ValueError(f"unknown {kind} '{name}', choose from {sorted(registry)}")
    return name


class Frozen(BaseModel):
    """Base of every config object: unknown keys and mutation are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Frozen):
    """Where the images come from and how they are cut into train and validation."""

    source: Literal["demo", "folder", "csv", "competition"] = "demo"
    root: Path | None = None  # folder / competition root; csv: the CSV file
    image_size: tuple[int, int] = (32, 32)  # (height, width) every image is resized to once
    val_ratio: float = Field(0.2, gt=0.0, lt=1.0)
    # 1: one split by val_ratio. K >= 2: K-fold cross-validation, grouped by person, every image validated once
    folds: int = Field(1, ge=1)
    age_bounds: tuple[int, int] = (30, 60)  # competition: age < 30 → 0, < 60 → 1, else 2
    cache_dir: Path | None = None  # persist decoded images here, keyed by source and size
    demo_imbalance: float = Field(12.0, ge=1.0)  # demo: largest class / smallest class
    decode_threads: int = Field(0, ge=0)  # 0: one per CPU core
    keep_damaged: bool = False  # train on JPEGs that end early (decoded with a grey tail) instead of leaving them out

    @field_validator("image_size", mode="before")
    @classmethod
    def _square(cls, value: Any) -> Any:
        return (value, value) if isinstance(value, int) else value

    @field_validator("image_size", "age_bounds")
    @classmethod
    def _increasing_positive(cls, value: tuple[int, int], info: Any) -> tuple[int, int]:
        if min(value) <= 0:
            raise ValueError(f"must be positive, got {list(value)}")
        if info.field_name == "age_bounds" and value[0] >= value[1]:
            raise ValueError(f"must be increasing, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _root_needed(self) -> DataConfig:
        if self.source != "demo" and self.root is None:
            raise ValueError(f"data.root is required for source '{self.source}'")
        return self


class AugmentConfig(Frozen):
    """Albumentations pipelines, as a list of ``{name: ..., **params}`` or albumentations' own dict."""

    train: list[dict[str, Any]] | dict[str, Any] = Field(default_factory=list)
    val: list[dict[str, Any]] | dict[str, Any] = Field(default_factory=list)
    rare: list[dict[str, Any]] | dict[str, Any] = Field(default_factory=list)
    rare_fraction: float = Field(0.25, ge=0.0, le=1.0)  # share of classes, smallest first
    balanced_sampling: bool = False


class ModelConfig(Frozen):
    """A timm model by name; ``weights`` loads a local file instead of timm's pretrained source."""

    name: str = "resnet10t"
    pretrained: bool = False
    weights: Path | None = None
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str, info: ValidationInfo) -> str:
        if not _timm_checks(info):
            return name
        import timm

        if not timm.is_model(name):
            close = nearest_names(name, timm.list_models())
            hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
            raise ValueError(f"unknown timm model '{name}' ({hint})")
        arch, _, tag = name.partition(".")
        tags = [known.partition(".")[2] for known in timm.list_pretrained(f"{arch}.*")] if tag else []
        if tag and tag not in tags:
            raise ValueError(f"timm has no weights tagged '{tag}' for {arch}; its tags: {', '.join(tags) or 'none'}")
        return name


# Characters a name is mistyped with for one another: a name that differs only by these is nearest.
_LOOKALIKE = str.maketrans({"o": "0", "l": "1", "i": "1", "-": "_"})


def nearest_names(name: str, names: list[str], n: int = 3) -> list[str]:
    """The ``n`` names closest to ``name``: a name equal but for case and lookalike characters
    (``efficientnet_bO``: ``efficientnet_b0``) first, then by difflib's similarity."""
    folded = name.lower().translate(_LOOKALIKE)
    close = difflib.get_close_matches(name, names, n=max(n, 10), cutoff=0.75)
    same = [other for other in names if other.lower().translate(_LOOKALIKE) == folded]
    return list(dict.fromkeys([*same, *close]))[:n]


class LossConfig(Frozen):
    """Which loss and its parameters; only the chosen loss's parameters are used."""

    name: str = "cross_entropy"
    focal_gamma: float = Field(2.0, ge=0.0)
    focal_alpha: list[float] | None = None
    smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    class_weights: bool = False  # weight classes by inverse frequency

    @field_validator("name")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        return registered("loss", name, LOSS_PARAMS)


class SchedulerConfig(Frozen):
    """Which learning-rate schedule and its parameters; warm-up applies to every schedule."""

    name: str = "cosine"
    step_size: int = Field(2, ge=1)
    step_gamma: float = Field(0.5, gt=0.0, le=1.0)
    eta_min: float = Field(0.0, ge=0.0)
    t_max: int | None = Field(None, ge=1)  # default: the number of epochs
    plateau_factor: float = Field(0.5, gt=0.0, lt=1.0)
    plateau_patience: int = Field(1, ge=0)
    warmup_steps: int = Field(0, ge=0)  # optimizer steps of linear warm-up

    @field_validator("name")
    @classmethod
    def _known_scheduler(cls, name: str) -> str:
        return registered("scheduler", name, SCHEDULER_PARAMS)


class OptimizerConfig(Frozen):
    """A timm optimizer by name (``adamw``, ``sgd``, ``adam``, ...)."""

    name: str = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)

    @field_validator("name")
    @classmethod
    def _known_optimizer(cls, name: str, info: ValidationInfo) -> str:
        if not _timm_checks(info):
            return name
        from timm.optim import list_optimizers

        if name not in list_optimizers():
            raise ValueError(f"unknown optimizer '{name}' (see timm.optim.list_optimizers())")
        return name


class TrainSettings(Frozen):
    """How a model is trained: a study file's ``train`` section, and the part of ``TrainConfig``
    that is neither the data, the model nor the seed."""

    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=1)  # micro-batch; the optimizer sees batch_size × accumulation
    accumulation_steps: int = Field(1, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    device: str = "auto"  # auto: CUDA when there is one, else CPU
    compile: bool = False  # torch.compile the model; the inductor cache persists under data.cache_dir
    cuda_graphs: bool = False  # replay the eager model's training steps as CUDA graphs (CUDA only)
    # The decoded images stay on the GPU when they take at most this share of its free memory, else
    # they stay in host memory and their batches are staged (`search run` divides it among the
    # workers that share a GPU).
    gpu_images_share: float = Field(0.5, gt=0.0, le=1.0)

    _cuda_graphs = field_validator("cuda_graphs")(check_cuda_graphs)

    def sharing_the_gpu(self, workers: int) -> TrainSettings:
        """These settings for one of ``workers`` processes on a GPU: each may keep its images there
        only within its part of the share (they all decide at once, each seeing the GPU empty)."""
        return self.model_copy(update={"gpu_images_share": self.gpu_images_share / workers})


def check_objective(name: str) -> str:
    return registered("objective", name, OBJECTIVES)


class TrainConfig(TrainSettings):
    """Everything one training run needs; ``train(config)`` reads nothing else."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    seed: int = 0
    objective: str = DEFAULT_OBJECTIVE  # the metric that picks the best epoch and that the plateau schedule watches
    output_dir: Path | None = None  # where the best epoch's checkpoint goes; None: none written

    _objective = field_validator("objective")(check_objective)

    @model_validator(mode="after")
    def _input_size_fits_the_model(self, info: ValidationInfo) -> TrainConfig:
        check_input_size(self.model, self.data, info)
        return self
