"""What only a GPU can show. Skipped without CUDA: run them where there is one
(``pytest tests/training/test_cuda.py``); the CPU suite covers the same code paths with CPU tensors."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from optuna.trial import TrialState

from search.run.mps import MPS_CONTROL, mps_daemon
from tests.conftest import tiny_config
from training.data.loader import DeviceBatchLoader
from training.device_augment import DeviceAugment
from training.per_process import forget_all

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

AUGMENT = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "Affine", "rotate": [-10, 10], "p": 0.7},
           {"name": "RandomBrightnessContrast", "p": 0.5}]  # fmt: skip


def test_staged_batches_are_the_resident_ones_and_come_from_pinned_buffers():
    """Images kept on the host (too large for the GPU) serve the same batches as images on the GPU.
    Every batch of an epoch is kept until the end: a buffer filled again before its copy to the GPU
    had finished would show as a batch that changed."""
    cuda = torch.device("cuda")
    host = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (301, 32, 24, 3), dtype=np.uint8))
    labels = np.arange(301) % 7

    def loader(images: torch.Tensor, augment: bool) -> DeviceBatchLoader:
        return DeviceBatchLoader(images, labels, np.arange(301), 64, shuffle=True, seed=3, device=cuda,
                                 augment=DeviceAugment(AUGMENT, 0) if augment else None)  # fmt: skip

    for augment in (False, True):
        resident, staged = loader(host.to(cuda), augment), loader(host, augment)
        assert resident.staging is None and staged.staging is not None
        assert all(buffer.is_pinned() for buffer in staged.staging.buffers)
        for epoch in range(3):
            kept = list(staged.batches(epoch))
            for (x1, y1), (x2, y2) in zip(resident.batches(epoch), kept, strict=True):
                assert x2.is_cuda and torch.equal(y1, y2)
                assert torch.equal(x1, x2) if not augment else torch.allclose(x1, x2, atol=1e-3)


def test_a_trial_trains_from_staged_host_images(monkeypatch):
    from training.loop import train_epoch
    from training.setup import set_up

    forget_all()  # this process's earlier decision, if any
    run = set_up(tiny_config(device="cuda", gpu_images_share=1e-12))  # the images take more than that
    assert run.train_loader.staging is not None and not run.train_loader.resident.is_cuda
    loss, seen, _ = train_epoch(run, 0)
    assert seen > 0 and math.isfinite(loss)


def test_cuda_graphs_accumulate_the_gradients_the_eager_model_does_and_a_trial_replays_them():
    """Two micro-batches through the replayed graphs sum to the eager model's gradient (autograd
    taking the graph's gradient buffer as ``.grad`` would count the second one twice), and a trial
    set up with ``train.cuda_graphs`` trains by replaying."""
    import copy

    import torch.nn.functional as F

    from training import accelerate, loop
    from training.models import create_model
    from training.setup import set_up

    cuda = torch.device("cuda")
    torch.manual_seed(0)
    eager = create_model(tiny_config().model, 7).to(cuda).to(memory_format=torch.channels_last).train()
    graphed = accelerate.CudaGraphed(copy.deepcopy(eager)).train()
    batches = [(torch.randn(32, 3, 16, 16, device=cuda).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 7, (32,), device=cuda)) for _ in range(2)]  # fmt: skip
    for model in (eager, graphed):
        for x, y in batches:
            with accelerate.autocast(cuda):
                (F.cross_entropy(model(x), y) * 0.5).backward()
    assert graphed.replays == 2
    summed = torch.cat([p.grad.flatten() for p in eager.parameters()])
    replayed = torch.cat([p.grad.flatten() for p in graphed.model.parameters()])
    assert torch.linalg.norm(replayed - summed) < 0.05 * torch.linalg.norm(summed)

    run = set_up(tiny_config(device="cuda", cuda_graphs=True, accumulation_steps=2))
    assert isinstance(run.forward, accelerate.CudaGraphed)
    loss, seen, _ = loop.train_epoch(run, 0)
    assert seen > 0 and math.isfinite(loss) and run.forward.replays == len(run.train_loader.batch_sizes())
    assert 0.0 <= loop.evaluate(run.model, run.val_loader, run.pipe)["macro_f1"] <= 1.0  # eval runs eager


def test_a_real_out_of_memory_fails_its_trial_frees_its_memory_and_the_worker_goes_on(tmp_path, monkeypatch):
    import search.run.objective as objective
    from search.run.lifecycle import run_here
    from search.run.options import RunOptions
    from search.study import load_study

    real_train, held_at_next_trial = objective.train, []

    def too_large_once(config, on_epoch_end=None):
        if not held_at_next_trial:
            held_at_next_trial.append(None)
            activations = torch.empty(2**30, dtype=torch.uint8, device="cuda")  # what the failed trial held
            activations += torch.empty(2**50, dtype=torch.uint8, device="cuda")  # 1 PiB: the allocator says no
        held_at_next_trial[0] = torch.cuda.memory_allocated()
        return real_train(config, on_epoch_end)

    monkeypatch.setattr(objective, "train", too_large_once)
    overrides = ["model.name=test_resnet", "data.image_size=16", "train.epochs=2", "train.batch_size=32",
                 "train.device=cuda", "pruner={name: none}", "name=oom"]  # fmt: skip
    options = RunOptions(storage_url=f"sqlite:///{tmp_path}/s.db", artifacts=tmp_path / "artifacts", n_trials=1,
                         timeout=None, quiet=True)  # fmt: skip
    study = run_here(load_study("lr-sweep", overrides), options)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["failure_reason"].startswith("OutOfMemoryError: CUDA out of memory")
    assert held_at_next_trial[0] < 2**30  # the failed trial's gigabyte was gone when the next one started


@pytest.mark.skipif(shutil.which(MPS_CONTROL) is None, reason=f"needs {MPS_CONTROL} (it comes with the driver)")
def test_a_worker_started_under_the_runs_own_daemon_is_its_client():
    """What `search run --trials-per-gpu K --mps` gives its workers makes their CUDA go through MPS:
    once one of them holds a context, the daemon has a server running for it."""
    code = "import sys, torch; print(torch.ones(1, device='cuda').item(), flush=True); sys.stdin.read()"
    with mps_daemon() as env:
        if env is None:
            pytest.skip("this machine already runs an MPS daemon; the workers use it as it is")
        worker = subprocess.Popen(
            [sys.executable, "-c", code], env=os.environ | env | {"CUDA_VISIBLE_DEVICES": "0"},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        said = worker.stdout.readline()
        servers = subprocess.run(
            [MPS_CONTROL], input="get_server_list\n", env=os.environ | env, capture_output=True, text=True, timeout=30
        ).stdout.split()
        worker.stdin.close()
        assert worker.wait(timeout=60) == 0
    assert said.strip() == "1.0"
    assert servers and all(pid.isdigit() for pid in servers), servers
