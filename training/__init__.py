"""Train one timm image classifier: data, augmentation, losses, schedulers, loop, checkpoints.

Nothing here imports Optuna. This module is what ``search`` may use of ``training``, by name:
the names below, and nothing reached past them. The ones that need torch, timm or OpenCV are
loaded on first use, so the commands that only read a study (and the study file's checks) do
not pay seconds of imports for them.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# albumentations asks PyPI for a newer version at every import (up to a 2 s timeout, and a warning
# on machines without network): seconds per worker process, for nothing a training run needs. A
# user who wants the check sets the variable to 0.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from training.config import (  # noqa: E402 - after the variable albumentations reads at import
    DEFAULT_OBJECTIVE,
    LOSS_PARAMS,
    OBJECTIVES,
    SCHEDULER_PARAMS,
    WITHOUT_TIMM,
    AugmentConfig,
    DataConfig,
    Frozen,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainConfig,
    TrainSettings,
    check_input_size,
    check_objective,
    registered,
)
from training.data.competition import PARTS, competition_class_names, part_labels  # noqa: E402
from training.data.facts import DataFacts  # noqa: E402
from training.data.listing import IMAGE_EXTENSIONS  # noqa: E402
from training.data.sources import cache_folder, default_cache_dir, load_source  # noqa: E402
from training.errors import (  # noqa: E402
    ConfigError,
    DataError,
    DiskError,
    NonFiniteLossError,
    SearchServiceError,
)
from training.files import make_folder, make_readable, process_alive, replacing  # noqa: E402
from training.pause_points import pause_point  # noqa: E402
from training.per_process import Said  # noqa: E402

# name -> the module that defines it, imported when the name is first asked for
_LAZY = {
    "PreparedData": "training.data.prepare",
    "prepare_data": "training.data.prepare",
    "content_digest": "training.data.cache",
    "TrainResult": "training.loop",
    "train": "training.loop",
    "train_on_all_data": "training.loop",
    "train_folds": "training.cross_validation",
    "free_device_memory": "training.setup",
    "fold_checkpoint": "training.cross_validation",
    "resolve_device": "training.setup",
    "fetch_weights": "training.models",
    "load_checkpoint": "training.checkpoint",
    "check_defined": "training.metrics",
    "classification_metrics": "training.metrics",
    "objective_value": "training.metrics",
    "LrFindResult": "training.lr_finder",
    "lr_find": "training.lr_finder",
    "default_bounds": "training.lr_finder",
    "read_meta": "training.checkpoint",
    "ensemble_metas": "training.predict",
    "predict_files": "training.predict",
    "predict_validation": "training.predict",
}

__all__ = [
    "DEFAULT_OBJECTIVE",
    "IMAGE_EXTENSIONS",
    "LOSS_PARAMS",
    "OBJECTIVES",
    "PARTS",
    "SCHEDULER_PARAMS",
    "WITHOUT_TIMM",
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "DataFacts",
    "DataError",
    "DiskError",
    "Frozen",
    "LossConfig",
    "ModelConfig",
    "NonFiniteLossError",
    "OptimizerConfig",
    "Said",
    "SchedulerConfig",
    "SearchServiceError",
    "TrainConfig",
    "TrainSettings",
    "cache_folder",
    "default_cache_dir",
    "check_input_size",
    "check_objective",
    "competition_class_names",
    "load_source",
    "make_folder",
    "make_readable",
    "part_labels",
    "pause_point",
    "process_alive",
    "registered",
    "replacing",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
