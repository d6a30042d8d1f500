"""Models come straight from timm by name; this adds local weights and a one-line failure."""

from __future__ import annotations

import timm
from torch import nn

from training.config import ModelConfig
from training.errors import SearchError


def create_model(config: ModelConfig, num_classes: int) -> nn.Module:
    """A timm model with a ``num_classes`` head; pretrained from timm's source or a local file."""
    if config.weights is not None and not config.weights.is_file():
        raise SearchError(
            f"could not load weights for {config.name}: model.weights {config.weights} is not a file; "
            "give the path of a weights file, or model.pretrained for timm's own"
        )
    overlay = {"file": str(config.weights)} if config.weights is not None else None
    try:
        return timm.create_model(
            config.name,
            pretrained=config.pretrained or config.weights is not None,
            pretrained_cfg_overlay=overlay,
            num_classes=num_classes,
            drop_rate=config.drop_rate,
        )
    except (OSError, RuntimeError, ValueError) as error:
        if not (config.pretrained or config.weights):
            raise
        where = config.weights or "timm's hub"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SearchError(
            f"could not load weights for {config.name} from {where} ({first}); "
            "set model.weights to a local file or model.pretrained=false"
        ) from None


def fetch_weights(config: ModelConfig) -> None:
    """Load a pretrained model's weights once, before any trial: from timm's hub into this machine's
    Hugging Face cache, where every later trial and worker finds them, or from the local file. A hub
    this machine cannot reach, or a file that is missing or of another model, is then one line
    before the first trial, not the same failure in every trial. Nothing to do without weights."""
    if config.pretrained or config.weights is not None:
        create_model(config, num_classes=2)  # the head is made anew either way; the backbone is what is loaded


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the model was (pre)trained with, from timm's config for it."""
    data = timm.data.resolve_model_data_config(model)
    return tuple(data["mean"]), tuple(data["std"])
