"""Batched inference with a checkpoint: its own input size and normalisation, eval mode, no grads."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from training.checkpoint import load_checkpoint
from training.data.cache import decode_image
from training.errors import DataError
from training.loop import InputPipe, autocast, resolve_device


def predict_files(
    checkpoint: Path,
    paths: Sequence[str],
    batch_size: int = 256,
    flip_tta: bool = False,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict]:
    """Class probabilities (N, C) for image files, and the checkpoint's header.

    Images are decoded and resized exactly as for training (OpenCV, INTER_AREA, RGB).
    ``flip_tta`` averages the probabilities of each image and its horizontal mirror.
    """
    where = resolve_device(device)
    model, meta = load_checkpoint(checkpoint, device=str(where))
    if where.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    size = tuple(meta["input_size"][1:])
    pipe = InputPipe(meta["mean"], meta["std"], where)
    out = []
    with torch.inference_mode(), ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            images = list(pool.map(lambda p: decode_image(p, size), chunk))
            for path, image in zip(chunk, images):
                if image is None:
                    raise DataError(f"cannot read image {path}; replace or remove it")
            x = pipe(torch.from_numpy(np.stack(images)))
            with autocast(where):
                probs = torch.softmax(model(x).float(), dim=1)
                if flip_tta:
                    probs = (probs + torch.softmax(model(x.flip(3)).float(), dim=1)) / 2
            out.append(probs.cpu())
            if progress is not None:
                progress(len(chunk))
    return torch.cat(out).numpy(), meta
