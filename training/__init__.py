"""Train one timm image classifier: data, augmentation, losses, schedulers, loop, checkpoints.

Nothing here imports Optuna; ``search`` drives this package through ``train``. The loop's names
are loaded on first use, so importing the config or the errors does not import torch and timm.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# albumentations asks PyPI for a newer version at every import (up to a 2 s timeout, and a warning
# on machines without network): seconds per worker process, for nothing a training run needs. A
# user who wants the check sets the variable to 0.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from training.config import (
    AugmentConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainConfig,
)
from training.errors import ConfigError, DataError, NonFiniteLossError, SearchError

_LAZY = {"PreparedData", "TrainResult", "prepare_data", "train"}

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "DataError",
    "LossConfig",
    "ModelConfig",
    "NonFiniteLossError",
    "OptimizerConfig",
    "SchedulerConfig",
    "SearchError",
    "TrainConfig",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("training.loop"), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
