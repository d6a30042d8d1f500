"""Setting up a training run: the device, the data, the model, its loaders, loss, optimizer and
schedule, as ``train`` uses them (the benchmarks time this same set-up's epochs)."""

from __future__ import annotations

import gc
import logging
import random
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from training import device_augment
from training.accelerate import training_forward
from training.augment import build_pipeline
from training.config import TrainConfig
from training.data.loader import BatchLoader, DeviceBatchLoader, rarest_classes, resident_images
from training.data.prepare import PreparedData, prepare_data
from training.errors import ConfigError
from training.losses import build_loss
from training.models import create_model, normalisation
from training.per_process import Said
from training.schedulers import Schedule, build_schedule

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device; ``auto`` is CUDA when there is one. A device this machine
    does not have is a configuration error (one line, before a trial), not a failure of each trial."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device = {name!r} is not a device torch knows; use auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if not count:
            raise ConfigError(f"train.device = {name!r}, but torch finds no CUDA device here; use auto or cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"train.device = {name!r}, but torch finds {count} CUDA device(s): cuda:0..{count - 1}")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class InputPipe:
    """Moves uint8 NHWC batches to the device and normalises them there, in one place."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        self.device = device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0
        # channels_last pays on CUDA; on the CPU the plain layout is the fast one.
        self.memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC (as decoded) or float NCHW 0..255 (augmented on the device; normalised in place)
        → normalised input."""
        x = images.to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float() if x.dtype == torch.uint8 else x
        x.sub_(self.mean).div_(self.std)  # a float batch is the augmentation's own: no copies
        return x.contiguous(memory_format=self.memory_format)


_WARNED = Said()


def _warn_once(message: str) -> None:
    """A warning said once per process: a worker's trials would each say it again."""
    if _WARNED.first_time(message):
        log.warning("%s", message)


def build_loaders(
    config: TrainConfig, data: PreparedData, device: torch.device | None = None
) -> tuple[BatchLoader | DeviceBatchLoader, BatchLoader | DeviceBatchLoader]:
    """Training and validation batches; on CUDA from resident images with device augmentation
    when every transform has a device counterpart, else albumentations on the CPU."""
    if device is not None and device.type == "cuda":
        augment = config.augment
        off_device = [
            *(f"augment.train: {step}" for step in device_augment.unsupported(augment.train)),
            *(f"augment.rare: {step}" for step in device_augment.unsupported(augment.rare)),
            *(["augment.val (the GPU validates un-augmented)"] if augment.val else []),
        ]
        if not off_device:
            return _device_loaders(config, data, device)
        _warn_once(
            f"no GPU counterpart for {'; '.join(off_device)}: every batch is augmented by albumentations on the "
            "CPU, which is likely to be the bottleneck (the GPU's transforms: "
            f"{', '.join(sorted(device_augment.DEVICE_TRANSFORMS))}; see the README, On a GPU)"
        )
    return _cpu_loaders(config, data)


def _rare(config: TrainConfig, data: PreparedData) -> list[int]:
    """The classes the ``augment.rare`` pipeline is for: the rarest in the training split."""
    return rarest_classes(data.decoded.labels[data.train_idx], data.num_classes, config.augment.rare_fraction)


def _device_loaders(
    config: TrainConfig, data: PreparedData, device: torch.device
) -> tuple[DeviceBatchLoader, DeviceBatchLoader]:
    augment, labels = config.augment, data.decoded.labels
    resident = resident_images(data.decoded.images, device, config.gpu_images_share)
    train_loader = DeviceBatchLoader(
        resident,
        labels,
        data.train_idx,
        config.batch_size,
        device=device,
        seed=config.seed,
        shuffle=True,
        balanced=augment.balanced_sampling,
        rare_classes=_rare(config, data),
        augment=device_augment.DeviceAugment(augment.train, config.seed) if augment.train else None,
        rare_augment=device_augment.DeviceAugment(augment.rare, config.seed + 1) if augment.rare else None,
    )
    val_loader = DeviceBatchLoader(
        resident, labels, data.val_idx, config.eval_batch_size, device=device, seed=config.seed, shuffle=False
    )
    return train_loader, val_loader


def _cpu_loaders(config: TrainConfig, data: PreparedData) -> tuple[BatchLoader, BatchLoader]:
    augment, images, labels = config.augment, data.decoded.images, data.decoded.labels
    train_loader = BatchLoader(
        images,
        labels,
        data.train_idx,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        pipeline=build_pipeline(augment.train, config.seed),
        rare_pipeline=build_pipeline(augment.rare, config.seed + 1),
        rare_classes=_rare(config, data),
        balanced=augment.balanced_sampling,
    )
    val_loader = BatchLoader(
        images,
        labels,
        data.val_idx,
        config.eval_batch_size,
        shuffle=False,
        seed=config.seed,
        pipeline=build_pipeline(augment.val, config.seed),
    )
    return train_loader, val_loader


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """timm's optimizer by name; on CUDA the fused implementation where torch has one."""
    from timm.optim import create_optimizer_v2

    kwargs = {"opt": config.optimizer.name, "lr": config.optimizer.lr, "weight_decay": config.optimizer.weight_decay}
    if device.type == "cuda" and config.optimizer.name in ("adam", "adamw", "sgd", "momentum"):
        try:
            return create_optimizer_v2(model, fused=True, **kwargs)
        except (TypeError, RuntimeError, ValueError):
            pass  # this torch or timm has no fused variant of it
    return create_optimizer_v2(model, **kwargs)


@dataclass
class Training:
    """One run's device, data, model, loaders, loss, optimizer and schedule, set up as ``train``
    uses them (the benchmarks time this same setup's epochs)."""

    config: TrainConfig
    device: torch.device
    data: PreparedData
    model: nn.Module
    forward: nn.Module  # what trains: the model, compiled or replayed as CUDA graphs when the config says so
    norm: tuple
    pipe: InputPipe
    train_loader: BatchLoader
    val_loader: BatchLoader
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule


def set_up(config: TrainConfig, *, all_data: bool = False, fold: int | None = None) -> Training:
    """A run ready for its first epoch: the data decoded (or found in the cache), the model on the
    device (channels_last and cuDNN autotuning on CUDA), compiled or replayed as CUDA graphs if asked.
    ``all_data``: the validation split trains too. ``fold``: the data split as that fold of the
    cross-validation (``data.folds``)."""
    device = resolve_device(config.device)
    data = prepare_data(config.data, config.seed)
    if fold is not None:
        data = data.fold(fold)
    if all_data:
        data = replace(data, train_idx=np.sort(np.concatenate([data.train_idx, data.val_idx])))
    seed_everything(config.seed)
    model = create_model(config.model, data.num_classes).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels once
        model = model.to(memory_format=torch.channels_last)
    norm = normalisation(model)
    train_loader, val_loader = build_loaders(config, data, device)
    optimizer = build_optimizer(model, config, device)
    return Training(
        config=config,
        device=device,
        data=data,
        model=model,
        forward=training_forward(model, config, device),
        norm=norm,
        pipe=InputPipe(*norm, device),
        train_loader=train_loader,
        val_loader=val_loader,
        loss_fn=build_loss(config.loss, data.train_class_counts()).to(device),
        optimizer=optimizer,
        schedule=build_schedule(optimizer, config.scheduler, config.epochs),
    )


def free_device_memory() -> None:
    """After a run (an out-of-memory one above all), give its GPU memory back to the next."""
    if torch.cuda.is_available():  # on the CPU the allocator returns memory by itself
        gc.collect()
        torch.cuda.empty_cache()
