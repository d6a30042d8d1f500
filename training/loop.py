"""The training loop: ``train(config, on_epoch_end) -> TrainResult``.

One epoch = ``train_one_epoch`` then ``evaluate``; the caller's ``on_epoch_end`` sees the
validation metrics and may stop the run (that is how a pruner stops a trial). The best epoch by
validation macro-F1 (never accuracy: the data is imbalanced) is checkpointed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training import device_augment
from training.augment import build_pipeline
from training.checkpoint import save_checkpoint
from training.config import DataConfig, TrainConfig
from training.data.cache import DecodedImages, decode_images
from training.data.loader import BatchLoader, DeviceBatchLoader, rarest_classes, resident_images
from training.data.sources import Dataset, cache_folder, default_cache_dir, load_source
from training.data.split import split_train_val, warn_unvalidated_classes
from training.errors import ConfigError, NonFiniteLossError
from training.losses import build_loss
from training.metrics import classification_metrics
from training.models import create_model, normalisation
from training.schedulers import Schedule, build_schedule

log = logging.getLogger(__name__)
EpochCallback = Callable[[int, dict[str, Any]], bool | None]


@dataclass
class TrainResult:
    """What a run leaves: the best epoch's metrics and checkpoint, and every epoch's history."""

    best_epoch: int
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    train_images_per_second: float
    checkpoint: Path | None
    device: str
    class_names: tuple[str, ...] = ()
    stopped_early: bool = False
    epochs_run: int = field(init=False)

    def __post_init__(self) -> None:
        self.epochs_run = len(self.history)


@dataclass(frozen=True)
class PreparedData:
    """Decoded images and the split, shared by every trial on the same data in this process."""

    decoded: DecodedImages
    train_idx: np.ndarray
    val_idx: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.decoded.class_names)

    def train_class_counts(self) -> np.ndarray:
        return np.bincount(self.decoded.labels[self.train_idx], minlength=self.num_classes)


_PREPARED: dict[tuple[str, int], PreparedData] = {}


def prepare_data(
    config: DataConfig,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    dataset: Dataset | None = None,
) -> PreparedData:
    """Load the source (unless ``dataset`` is its listing already), decode it once (cached), and
    split it by the seed.

    Memoised per process: the trials of a worker share one listing, one decode and one split
    (the files are taken to stay as they are while a worker runs; a new process looks again).
    """
    key = (config.model_dump_json(), seed)
    if key in _PREPARED:
        return _PREPARED[key]
    dataset = dataset or load_source(config)
    decoded = decode_images(dataset, config.image_size, cache_folder(config.cache_dir), config.decode_threads, progress)
    train_idx, val_idx = split_train_val(decoded.labels, decoded.groups, config.val_ratio, seed)
    _PREPARED[key] = PreparedData(decoded, train_idx, val_idx)
    warn_unvalidated_classes(decoded.labels, val_idx, decoded.class_names)
    return _PREPARED[key]


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


def autocast(device: torch.device, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision on the CPU. ``cache``: keep each weight's bf16 copy for
    the rest of the context (a CUDA graph's capture must not)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


class CudaGraphed(nn.Module):
    """The model for training steps, its forward and backward replayed as CUDA graphs: a launch each
    instead of one per kernel, which is what bounds a step of a small batch on a fast GPU
    (efficientnet_b0 at the mask study's batch 64 on an H200: 1,720 img/s eager, 5,193 at batch 256).
    Captured at the first training batch by ``torch.cuda.make_graphed_callables`` (a few passes, no
    compiler); a batch of another shape, and eval mode, run the model as it is. The model itself
    stays eager: validation and checkpoints see a plain module.

    What the capture needs beyond a plain step: its warm-up passes move the batch-norm statistics,
    which are put back; and the parameters' gradients stay allocated (``keeps_grads``: the loop
    zeroes them instead of dropping them), since autograd would otherwise take the graph's own
    gradient buffer as ``.grad``, and the next micro-batch's replay would overwrite it: accumulated
    gradients would silently count the last micro-batch twice (pytorch/pytorch#181723)."""

    keeps_grads = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.shape: torch.Size | None = None
        self.replay: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.replays = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.model.training:
            return self.model(x)
        if self.replay is None:
            self.capture(x)
        if x.shape != self.shape:
            return self.model(x)
        self.replays += 1
        return self.replay(x)

    def capture(self, x: torch.Tensor) -> None:
        """Graphs for training batches shaped as ``x``."""
        model = self.model
        saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
        for parameter in model.parameters():
            if parameter.requires_grad and parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        with autocast(x.device, cache=False):
            # allow_unused_input: a timm model may hold parameters its forward does not use
            torch.cuda.make_graphed_callables(model, (x.detach().clone(),), allow_unused_input=True)
        # It gave the module a forward that replays in training mode: kept here, the module's own back.
        self.replay = model.__dict__.pop("forward")
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
        self.shape = x.shape


def accumulation_weights(batch_sizes: list[int], steps: int) -> list[tuple[float, bool]]:
    """For each micro-batch: the factor its mean loss is scaled by, and whether the optimizer steps.

    Micro-batches are grouped ``steps`` at a time; each is weighted by its share of its group, so a
    group's summed gradient is the gradient of the mean over the whole group. A trailing partial
    group is weighted by its own size and still steps.
    """
    out: list[tuple[float, bool]] = []
    for start in range(0, len(batch_sizes), steps):
        group = batch_sizes[start : start + steps]
        total = sum(group)
        out += [(size / total, i == len(group) - 1) for i, size in enumerate(group)]
    return out


def train_one_epoch(
    model: nn.Module,
    loader: BatchLoader,
    epoch: int,
    pipe: InputPipe,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    accumulation_steps: int,
) -> tuple[float, int, float]:
    """One pass over the training split; returns (mean loss, images seen, seconds)."""
    model.train()
    weights = accumulation_weights(loader.batch_sizes(), accumulation_steps)
    # The loss is summed on the device and read once, at the end: no host sync per step.
    loss_sum = torch.zeros((), device=pipe.device)
    seen = 0
    started = time.perf_counter()
    for (images, labels), (weight, step) in zip(loader.batches(epoch), weights):
        labels = labels.to(pipe.device, non_blocking=True)
        with autocast(pipe.device):
            loss = loss_fn(model(pipe(images)), labels)
        (loss * weight).backward()
        loss_sum += loss.detach().float() * len(labels)
        seen += len(labels)
        if step:
            optimizer.step()
            optimizer.zero_grad(set_to_none=not getattr(model, "keeps_grads", False))
            schedule.after_optimizer_step()
    mean_loss = loss_sum.item() / max(seen, 1)
    seconds = time.perf_counter() - started
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError(epoch, mean_loss)
    return mean_loss, seen, seconds


@torch.inference_mode()
def predict_probs(model: nn.Module, loader: BatchLoader, pipe: InputPipe) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and labels for every sample of ``loader``, in eval mode."""
    model.eval()
    probs, labels = [], []
    for images, y in loader.batches(0):
        with autocast(pipe.device):
            logits = model(pipe(images))
        probs.append(torch.softmax(logits.float(), dim=1))
        labels.append(y)
    # gathered where they were made and read back once: a read per batch would stall every batch
    return torch.cat(probs).cpu().numpy(), torch.cat(labels).cpu().numpy()


def evaluate(model: nn.Module, loader: BatchLoader, pipe: InputPipe) -> dict[str, Any]:
    probs, labels = predict_probs(model, loader, pipe)
    return classification_metrics(labels, probs)


def checkpoint_meta(config: TrainConfig, data: PreparedData, pipe_norm: tuple, epoch: int, metrics: dict) -> dict:
    mean, std = pipe_norm
    return {
        "model": config.model.name,
        "num_classes": data.num_classes,
        "class_names": list(data.decoded.class_names),
        "input_size": [3, *config.data.image_size],
        "mean": list(mean),
        "std": list(std),
        "epoch": epoch,
        "metrics": metrics,
        "config": config.model_dump(mode="json"),
    }


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A warning said once per process: a worker's trials would each say it again."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


def build_loaders(
    config: TrainConfig, data: PreparedData, device: torch.device | None = None
) -> tuple[BatchLoader, BatchLoader]:
    """Training and validation batches; on CUDA from resident images with device augmentation
    when every transform has a device counterpart, else albumentations on the CPU."""
    images, labels = data.decoded.images, data.decoded.labels
    augment = config.augment
    rare = rarest_classes(labels[data.train_idx], data.num_classes, augment.rare_fraction)
    if device is not None and device.type == "cuda":
        off_device = [
            *(f"augment.train: {step}" for step in device_augment.unsupported(augment.train)),
            *(f"augment.rare: {step}" for step in device_augment.unsupported(augment.rare)),
            *(["augment.val (the GPU validates un-augmented)"] if augment.val else []),
        ]
        if not off_device:
            resident = resident_images(images, device, config.gpu_images_share)
            train_augment = device_augment.DeviceAugment(augment.train, config.seed) if augment.train else None
            rare_augment = device_augment.DeviceAugment(augment.rare, config.seed + 1) if augment.rare else None
            train_loader = DeviceBatchLoader(
                resident,
                labels,
                data.train_idx,
                config.batch_size,
                device=device,
                seed=config.seed,
                shuffle=True,
                balanced=augment.balanced_sampling,
                rare_classes=rare,
                augment=train_augment,
                rare_augment=rare_augment,
            )
            val_loader = DeviceBatchLoader(
                resident, labels, data.val_idx, config.eval_batch_size, device=device, seed=config.seed, shuffle=False
            )
            return train_loader, val_loader
        _warn_once(
            f"no GPU counterpart for {'; '.join(off_device)}: every batch is augmented by albumentations on the "
            "CPU, which is likely to be the bottleneck (the GPU's transforms: "
            f"{', '.join(sorted(device_augment.DEVICE_TRANSFORMS))}; see the README, On a GPU)"
        )
    train_loader = BatchLoader(
        images,
        labels,
        data.train_idx,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        pipeline=build_pipeline(augment.train, config.seed),
        rare_pipeline=build_pipeline(augment.rare, config.seed + 1),
        rare_classes=rare,
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


def compiled(model: nn.Module, config: TrainConfig) -> nn.Module:
    """``torch.compile`` with the inductor cache on disk, shared by every worker of the machine, so a
    shape compiles once per machine rather than once per trial."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache_dir(config))
    inductor_config.fx_graph_cache = True  # compiled graphs on disk, found again by every process
    functorch_config.enable_autograd_cache = True  # and their backward graphs
    return torch.compile(model)


def training_forward(model: nn.Module, config: TrainConfig, device: torch.device) -> nn.Module:
    """The model as training steps call it: compiled, replayed as CUDA graphs (on CUDA; the CPU has
    none, and runs the model as it is), or the model itself."""
    if config.compile:
        return compiled(model, config)
    if config.cuda_graphs and device.type == "cuda":
        return CudaGraphed(model)
    return model


def inductor_cache_dir(config: TrainConfig) -> Path:
    """Where compiled kernels go: a folder the user chose in ``TORCHINDUCTOR_CACHE_DIR``, else the
    cache folder's ``inductor/`` (shared by the workers, and persisted where the cache is).

    torch sets ``TORCHINDUCTOR_CACHE_DIR`` to its per-user temporary folder itself as soon as its
    compiler is imported (importing timm does that), so that value counts as "not chosen"."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default
    except ImportError:  # a torch that does not fill it in by itself
        torch_default = None
    if chosen and (torch_default is None or os.path.abspath(chosen) != os.path.abspath(torch_default())):
        return Path(chosen)
    return (cache_folder(config.data.cache_dir) or default_cache_dir(config.data.cache_dir)) / "inductor"


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

    def train_epoch(self, epoch: int, accumulation_steps: int | None = None) -> tuple[float, int, float]:
        """``train_one_epoch`` on this setup: (mean loss, images seen, seconds)."""
        steps = accumulation_steps or self.config.accumulation_steps
        return train_one_epoch(
            self.forward, self.train_loader, epoch, self.pipe, self.loss_fn, self.optimizer, self.schedule, steps
        )


def set_up(config: TrainConfig, all_data: bool = False) -> Training:
    """A run ready for its first epoch: the data decoded (or found in the cache), the model on the
    device (channels_last and cuDNN autotuning on CUDA), compiled or replayed as CUDA graphs if asked.
    ``all_data``: the validation split trains too."""
    device = resolve_device(config.device)
    data = prepare_data(config.data, config.seed)
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


def train_on_all_data(config: TrainConfig, validation_f1: Sequence[float], out: Path) -> Path:
    """A trial's recipe again on every image, its validation split included, for as many epochs as
    ``validation_f1`` holds (the trial's macro-F1 per epoch up to its best: where it peaked), as the
    final model of a competition. The schedule steps as in the trial, the plateau scheduler reading
    the trial's own macro-F1 since nothing is held out to measure a new one. The last epoch's
    weights are the checkpoint; its header has no metrics, only what it was trained on."""
    run = set_up(config, all_data=True)
    rates = []
    for epoch, f1 in enumerate(validation_f1):
        rates.append(run.schedule.lr())
        run.train_epoch(epoch)
        run.schedule.after_epoch(f1)
    meta = checkpoint_meta(config, run.data, run.norm, len(validation_f1) - 1, {})
    meta["trained_on"] = {"images": len(run.data.train_idx), "held_out": 0, "epoch_lr": rates}
    return save_checkpoint(out, run.model, meta)


def train(config: TrainConfig, on_epoch_end: EpochCallback | None = None) -> TrainResult:
    """Train one model as configured; ``on_epoch_end(epoch, metrics)`` returning True stops early."""
    run = set_up(config)
    model, data, schedule = run.model, run.data, run.schedule
    checkpoint_path = Path(config.output_dir) / "best.safetensors" if config.output_dir else None

    history: list[dict[str, Any]] = []
    best_epoch, best_metrics = -1, {}
    images_seen, train_seconds = 0, 0.0
    stopped = False
    for epoch in range(config.epochs):
        lr = schedule.lr()
        loss, seen, seconds = run.train_epoch(epoch)
        images_seen, train_seconds = images_seen + seen, train_seconds + seconds
        metrics = {
            "epoch": epoch,
            "train_loss": loss,
            "lr": lr,
            "train_images_per_second": seen / seconds if seconds else float("inf"),
            # Eager even when compiled: validation without grad, and its short last batch, would each
            # be one more graph to compile per trial, for a few batches per epoch.
            **evaluate(model, run.val_loader, run.pipe),
        }
        history.append(metrics)
        if metrics["macro_f1"] > best_metrics.get("macro_f1", -1.0):
            best_epoch, best_metrics = epoch, metrics
            if checkpoint_path is not None:
                save_checkpoint(checkpoint_path, model, checkpoint_meta(config, data, run.norm, epoch, metrics))
        schedule.after_epoch(metrics["macro_f1"])
        if on_epoch_end is not None and on_epoch_end(epoch, metrics):
            stopped = epoch < config.epochs - 1
            break
    return TrainResult(
        best_epoch=best_epoch,
        best_metrics=best_metrics,
        history=history,
        train_images_per_second=images_seen / train_seconds if train_seconds else 0.0,
        checkpoint=checkpoint_path,
        device=str(run.device),
        class_names=data.decoded.class_names,
        stopped_early=stopped,
    )
