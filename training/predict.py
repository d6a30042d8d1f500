"""Batched inference with a checkpoint: its own input size and normalisation, eval mode, no grads."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from training.accelerate import autocast
from training.checkpoint import load_checkpoint, read_meta
from training.config import TrainConfig
from training.data.cache import decode_image
from training.data.prepare import prepare_data
from training.errors import ConfigError, DataError
from training.loop import predict_probs
from training.setup import InputPipe, build_loaders, resolve_device


def predict_files(
    checkpoints: Sequence[Path],
    paths: Sequence[str],
    batch_size: int = 256,
    *,
    flip_tta: bool = False,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
    weights: Sequence[float] | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """Class probabilities (N, C) for image files, averaged over the checkpoints (an ensemble; by
    ``weights`` where given), and their headers. Checkpoints of other classes than the first's are
    refused before any predicts.

    Images are decoded and resized exactly as for training (OpenCV, INTER_AREA, RGB), once per
    batch for each input size among the checkpoints. ``flip_tta`` averages the probabilities of
    each image and its horizontal mirror.
    """
    where = resolve_device(device)
    ensemble_metas(checkpoints)
    models, metas = zip(*(load_checkpoint(c, device=str(where)) for c in checkpoints))
    if where.type == "cuda":
        models = [m.to(memory_format=torch.channels_last) for m in models]
    pipes = [InputPipe(meta["mean"], meta["std"], where) for meta in metas]
    shares = [w / sum(weights) for w in weights] if weights else [1 / len(models)] * len(models)
    out = []
    with torch.inference_mode(), ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            decoded: dict[tuple[int, int], torch.Tensor] = {}
            probs = torch.zeros(())
            for model, meta, pipe, share in zip(models, metas, pipes, shares):
                size = tuple(meta["input_size"][1:])
                if size not in decoded:
                    decoded[size] = _decode(pool, chunk, size)
                probs = probs + share * _probabilities(model, pipe(decoded[size]), where, flip_tta=flip_tta)
            out.append(probs)
            if progress is not None:
                progress(len(chunk))
    return torch.cat(out).numpy(), list(metas)


def ensemble_metas(checkpoints: Sequence[Path]) -> list[dict]:
    """The checkpoints' headers, read without their weights: a file that is not a checkpoint, or one of
    other classes than the first's (their probabilities would be averaged class by class), is refused."""
    metas = [read_meta(c) for c in checkpoints]
    names = metas[0]["class_names"]
    for checkpoint, meta in zip(checkpoints[1:], metas[1:]):
        if meta["class_names"] != names:
            raise ConfigError(
                f"{checkpoint} predicts other classes than {checkpoints[0]} ({meta['class_names']} against {names}); "
                "an ensemble needs checkpoints of the same classes"
            )
    return metas


def _decode(pool: ThreadPoolExecutor, chunk: Sequence[str], size: tuple[int, int]) -> torch.Tensor:
    images = list(pool.map(lambda p: decode_image(p, size), chunk))
    for path, image in zip(chunk, images):
        if image is None:
            raise DataError(f"cannot read image {path}; replace or remove it")
    return torch.from_numpy(np.stack(images))


def _probabilities(model: torch.nn.Module, x: torch.Tensor, where: torch.device, *, flip_tta: bool) -> torch.Tensor:
    with autocast(where):
        probs = torch.softmax(model(x).float(), dim=1)
        if flip_tta:
            probs = (probs + torch.softmax(model(x.flip(3)).float(), dim=1)) / 2
    return probs.cpu()


def predict_validation(checkpoint: Path, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and labels of the validation split of ``config``'s data, predicted by a
    checkpoint on the CPU, batch by batch as its trial validated."""
    model, meta = load_checkpoint(checkpoint)
    _, val_loader = build_loaders(config, prepare_data(config.data, config.seed))
    return predict_probs(model, val_loader, InputPipe(meta["mean"], meta["std"], torch.device("cpu")))
