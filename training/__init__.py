"""Train one timm image classifier: data, augmentation, losses, schedulers, loop, checkpoints.

Nothing here imports Optuna; ``search`` drives this package through ``train``.
"""

from __future__ import annotations

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
from training.loop import PreparedData, TrainResult, prepare_data, train

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "DataError",
    "LossConfig",
    "ModelConfig",
    "NonFiniteLossError",
    "OptimizerConfig",
    "PreparedData",
    "SchedulerConfig",
    "SearchError",
    "TrainConfig",
    "TrainResult",
    "prepare_data",
    "train",
]
