"""Accelerator options of a training run: bf16 autocast, ``torch.compile`` with its cache on disk,
and training steps replayed as CUDA graphs. Each is off on the CPU or when the config says so."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from training.config import TrainConfig
from training.data.sources import cache_folder, default_cache_dir


def autocast(device: torch.device, *, cache: bool = True) -> contextlib.AbstractContextManager:
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
