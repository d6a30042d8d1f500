"""Checkpoints: safetensors weights plus a JSON header that says how to rebuild and feed the model.

Nothing is unpickled on load. The header holds the timm model name, the class names, the input
size and normalisation, the resolved config, the metrics and library versions, so a plain timm
model can be rebuilt from the file alone::

    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file
    import json, timm
    meta = json.loads(safe_open(path, "pt").metadata()["search"])
    model = timm.create_model(meta["model"], num_classes=meta["num_classes"])
    model.load_state_dict(load_file(path))
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from training.errors import DiskError, SearchServiceError
from training.files import replacing

FORMAT = "search-checkpoint/1"


def library_versions() -> dict[str, str]:
    import albumentations
    import timm

    return {"torch": torch.__version__, "timm": timm.__version__, "albumentations": albumentations.__version__}


def checkpoint_meta(
    config: Any, class_names: Sequence[str], norm: tuple[Sequence[float], Sequence[float]], epoch: int, metrics: dict
) -> dict[str, Any]:
    """The header of a checkpoint of ``config``'s model (a ``TrainConfig``) after ``epoch``: what
    rebuilds it (model, classes), what feeds it (input size, normalisation), and how it scored."""
    mean, std = norm
    return {
        "model": config.model.name,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "input_size": [3, *config.data.image_size],
        "mean": list(mean),
        "std": list(std),
        "epoch": epoch,
        "metrics": metrics,
        "config": config.model_dump(mode="json"),
    }


def save_checkpoint(path: Path, model: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """Write weights and header atomically: a crash leaves the old file or the new one, never half."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    header = {"search": json.dumps({"format": FORMAT, **meta, "versions": library_versions()})}
    with replacing(path, "checkpoint") as temporary:
        try:
            save_file(state, str(temporary), metadata=header)
        except SafetensorError as error:  # safetensors reports a full disk as its own error
            raise DiskError(f"could not write checkpoint {path}: {str(error).rsplit(': ', 1)[-1]}") from None
    return Path(path)


def read_meta(path: Path) -> dict[str, Any]:
    """The checkpoint's header; a clear error when the file is not one of ours."""
    try:
        with safe_open(str(path), "pt") as file:
            meta = json.loads((file.metadata() or {}).get("search", "{}"))
    except (OSError, ValueError, SafetensorError) as error:  # SafetensorError: not a safetensors file at all
        raise SearchServiceError(
            f"{path} is not a readable checkpoint ({error}); give one written by search export"
        ) from None
    if meta.get("format") != FORMAT:
        raise SearchServiceError(f"{path} is a safetensors file but not a search checkpoint (no header)")
    return meta


def load_checkpoint(path: Path, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the plain timm model from a checkpoint, in eval mode, with its header."""
    import timm

    meta = read_meta(path)
    model = timm.create_model(meta["model"], num_classes=meta["num_classes"])
    model.load_state_dict(load_file(str(path), device=device))
    return model.to(device).eval(), meta
