"""Models come straight from timm by name; this adds local weights and a one-line failure."""

from __future__ import annotations

import socket
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import timm
from torch import nn

from training.config import ModelConfig
from training.errors import SearchServiceError
from training.per_process import Kept

# The file in this machine's Hugging Face cache that each model's hub weights were loaded from, by
# this process: later loads of the model read it directly. Through timm, every load asks the hub
# for the file's latest version first (a request per trial; where the hub's packets are dropped,
# its time-outs per trial before timm falls back on the cache). None: not from the hub (a URL's
# weights, in torch's cache, which asks nothing once cached), so there is nothing to look for again.
_hub_files: Kept = Kept()  # kept per process: training/per_process.py


def create_model(config: ModelConfig, num_classes: int) -> nn.Module:
    """A timm model with a ``num_classes`` head; pretrained from timm's source or a local file."""
    if config.weights is not None and not config.weights.is_file():
        raise SearchServiceError(
            f"could not load weights for {config.name}: model.weights {config.weights} is not a file; "
            "give the path of a weights file, or model.pretrained for timm's own"
        )
    try:
        model = timm.create_model(
            config.name,
            pretrained=config.pretrained or config.weights is not None,
            pretrained_cfg_overlay=_weights_overlay(config),
            num_classes=num_classes,
            drop_rate=config.drop_rate,
        )
    except (OSError, RuntimeError, ValueError) as error:
        if not (config.pretrained or config.weights):
            raise
        where = config.weights or "timm's hub"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SearchServiceError(
            f"could not load weights for {config.name} from {where} ({first}); "
            "set model.weights to a local file or model.pretrained=false"
        ) from None
    if config.pretrained and config.weights is None and config.name not in _hub_files:
        _remember_hub_file(config.name, model.pretrained_cfg)
    return model


def _weights_overlay(config: ModelConfig) -> dict[str, str] | None:
    """Where timm is to load the weights from instead of its own source: the study's file, or the
    hub's file that this process loaded before (if it is still in the cache)."""
    if config.weights is not None:
        return {"file": str(config.weights)}
    cached = _hub_files.get(config.name) if config.pretrained else None
    if cached and Path(cached).is_file():
        return {"file": cached, "source": ""}  # an empty source: a file is not read for source 'hf-hub'
    return None


def _remember_hub_file(name: str, pretrained_cfg: dict[str, Any]) -> None:
    """Note the cached file that timm just loaded ``name``'s hub weights from, if it did."""
    _hub_files[name] = _cached_hub_file(pretrained_cfg)


def _cached_hub_file(pretrained_cfg: dict[str, Any]) -> str | None:
    """The file of this machine's Hugging Face cache that timm loads a model's hub weights from: the
    file it asks the hub for, or its safetensors twin, which it prefers. None where the cache does
    not hold it, or the weights do not come from the hub (a URL's, in torch's cache, which asks
    nothing once cached, or a loader of the model's own)."""
    repo, filename = pretrained_cfg.get("hf_hub_id"), pretrained_cfg.get("hf_hub_filename") or "pytorch_model.bin"
    if not repo or pretrained_cfg.get("custom_load") or pretrained_cfg.get("file"):
        return None
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    twins = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}
    safe = twins.get(filename, filename.removesuffix(".bin") + ".safetensors") if filename.endswith(".bin") else None
    for candidate in (safe, filename):
        found = candidate and try_to_load_from_cache(repo_id, candidate, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def check_hub(name: str) -> None:
    """Before timm asks the model hub for ``name``'s weights, within ``HUB_SECONDS``: weights this
    machine's cache holds are read from it where the hub does not answer (not after its retries);
    weights it lacks, with no hub to fetch them from, are one line saying what to do."""
    from huggingface_hub import constants
    from timm.models import get_pretrained_cfg

    try:
        pretrained = get_pretrained_cfg(name)
    except RuntimeError:  # a tag timm does not know: create_model says so, in one line
        return
    if pretrained is None or not pretrained.hf_hub_id:
        return  # weights from a URL: torch's download says what went wrong
    cached = _cached_hub_file(pretrained.to_dict())
    if constants.HF_HUB_OFFLINE:
        problem = "HF_HUB_OFFLINE is set"
    else:
        problem = _unanswered(constants.ENDPOINT)
        if problem is not None and cached:
            _hub_files[name] = cached
    if problem is not None and not cached:
        raise SearchServiceError(
            f"could not load weights for {name}: this machine's Hugging Face cache lacks them and {problem}; "
            "set model.weights to a weights file, or fill the cache where the hub answers (then HF_HUB_OFFLINE=1), "
            "or set model.pretrained=false"
        )


HUB_SECONDS = 3.0


def _unanswered(endpoint: str) -> str | None:
    """Why the hub at ``endpoint`` cannot be reached from here (no route, no name, no answer within
    ``HUB_SECONDS``, the name's lookup included), or None when it answers."""
    url = urllib.parse.urlsplit(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host or ""):  # reached through the proxy, as huggingface_hub does
        via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = via.hostname, via.port or 80
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_SECONDS).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"the model hub {endpoint} cannot be reached ({error.strerror or error})")

    probe = threading.Thread(target=connect, daemon=True)  # a lookup that hangs ends with the process
    probe.start()
    probe.join(HUB_SECONDS)
    return outcome[0] if outcome else f"the model hub {endpoint} did not answer within {HUB_SECONDS:g} s"


def fetch_weights(config: ModelConfig) -> None:
    """Load a pretrained model's weights once, before any trial: from timm's hub into this machine's
    Hugging Face cache, where every later worker finds them (and this process's trials, without
    asking the hub again), or from the local file. A hub this machine cannot reach, or a file that
    is missing or of another model, is then one line before the first trial, not the same failure
    in every trial. Nothing to do without weights."""
    if config.pretrained and config.weights is None:
        check_hub(config.name)
    if config.pretrained or config.weights is not None:
        create_model(config, num_classes=2)  # the head is made anew either way; the backbone is what is loaded


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the model was (pre)trained with, from timm's config for it."""
    data = timm.data.resolve_model_data_config(model)
    return tuple(data["mean"]), tuple(data["std"])
