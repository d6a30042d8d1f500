from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from tests.conftest import tiny_config
from training import NonFiniteLossError, SchedulerConfig, SearchServiceError, accelerate, setup, train
from training.checkpoint import load_checkpoint, read_meta
from training.data.loader import BatchLoader
from training.data.prepare import prepare_data
from training.loop import accumulation_weights, predict_probs, train_epoch, train_on_all_data, train_one_epoch
from training.models import create_model
from training.per_process import forget_all
from training.schedulers import build_schedule
from training.setup import InputPipe, build_loaders, set_up

ROOT = Path(__file__).resolve().parents[2]


def test_training_package_never_imports_optuna():
    for path in (ROOT / "training").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            module = node.module if isinstance(node, ast.ImportFrom) else ""
            assert not any(n.startswith("optuna") for n in names + [module or ""]), path


def test_train_returns_best_epoch_history_throughput_and_checkpoint(folder_dataset, tmp_path):
    result = train(tiny_config(folder_dataset, epochs=3, output_dir=tmp_path / "out"))
    assert result.epochs_run == 3 and len(result.history) == 3
    f1s = [h["macro_f1"] for h in result.history]
    assert result.best_epoch == int(np.argmax(f1s)) and result.best_metrics["macro_f1"] == max(f1s)
    assert result.train_images_per_second > 0 and result.device == "cpu"
    for key in ("accuracy", "macro_precision", "macro_recall", "roc_auc", "per_class_f1", "confusion_matrix"):
        assert key in result.best_metrics
    assert result.checkpoint.is_file()


def test_a_class_the_validation_split_lacks_is_noted_with_the_ceiling_it_puts_on_macro_f1(folder_dataset):
    """Noted on the prepared data, for the run that opens the study to say (once, for its workers too)."""
    data = prepare_data(tiny_config(folder_dataset).data, 0)  # every class validated: nothing noted
    assert not any("validation split has no image" in note for note in data.notes)
    forget_all()  # as a new process: the folder is listed again
    (folder_dataset / "owl").mkdir()
    (folder_dataset / "fox" / "0.jpg").rename(folder_dataset / "owl" / "0.jpg")  # one image: one side only
    unvalidated, notes = 0, []
    for seed in range(6):
        data = prepare_data(tiny_config(folder_dataset).data, seed)
        assert data.decoded.class_names[3] == "owl"
        unvalidated += 3 not in data.decoded.labels[data.val_idx]
        notes += data.notes
    assert unvalidated >= 1  # the seeds that put the image on the training side
    said = "the validation split has no image of 1 of 4 classes: 'owl' (1 in all); macro-F1 counts each as 0"
    assert sum(said in note for note in notes) == unvalidated
    assert all("so no trial can score above 0.75 (trials still rank fairly)" in note for note in notes if said in note)


def test_augmentation_without_a_gpu_counterpart_is_said_once_per_process_naming_what_keeps_it_on_the_cpu(
    folder_dataset, caplog, monkeypatch
):
    forget_all()  # no warning said yet
    flip = {"name": "HorizontalFlip", "p": 0.5}
    steps = {"train": [flip, {"name": "GaussNoise"}], "val": [flip]}
    config = tiny_config(folder_dataset, augment=steps)
    data = prepare_data(config.data, config.seed)
    for _ in range(2):  # two trials of one worker; the path is chosen before anything touches CUDA
        loaders = build_loaders(config, data, torch.device("cuda"))
        assert [type(loader) for loader in loaders] == [BatchLoader, BatchLoader]  # albumentations on the CPU
    said = (
        "no GPU counterpart for augment.train: GaussNoise; augment.val (the GPU validates un-augmented): every "
        "batch is augmented by albumentations on the CPU, which is likely to be the bottleneck (the GPU's transforms: "
    )
    assert caplog.text.count(said) == 1


def test_on_epoch_end_can_stop_training(folder_dataset):
    seen = []
    result = train(tiny_config(folder_dataset, epochs=5), lambda epoch, m: seen.append(epoch) or epoch == 1)
    assert seen == [0, 1] and result.epochs_run == 2 and result.stopped_early


def test_same_seed_gives_the_same_metrics_twice_on_cpu(folder_dataset):
    config = tiny_config(folder_dataset, epochs=2, augment={"train": [{"name": "HorizontalFlip", "p": 0.5}]})
    a, b = train(config), train(config)
    assert [h["macro_f1"] for h in a.history] == [h["macro_f1"] for h in b.history]
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    other = train(config.model_copy(update={"seed": 1}))
    assert [h["train_loss"] for h in other.history] != [h["train_loss"] for h in a.history]


def test_checkpoint_is_safe_self_describing_and_predicts_identically(folder_dataset, tmp_path):
    config = tiny_config(folder_dataset, epochs=2, output_dir=tmp_path)
    result = train(config)
    with safe_open(str(result.checkpoint), "pt") as f:
        meta = json.loads(f.metadata()["search"])
    assert meta["model"] == "test_resnet" and meta["num_classes"] == 3
    assert meta["class_names"] == ["cat", "dog", "fox"] and meta["input_size"] == [3, 16, 16]
    assert len(meta["mean"]) == 3 and meta["config"]["seed"] == 0 and "torch" in meta["versions"]
    assert meta["metrics"]["macro_f1"] == result.best_metrics["macro_f1"]
    model, _ = load_checkpoint(result.checkpoint)
    data = prepare_data(config.data, config.seed)
    _, val_loader = build_loaders(config, data)
    probs, labels = predict_probs(model, val_loader, InputPipe(meta["mean"], meta["std"], torch.device("cpu")))
    from training.metrics import classification_metrics

    assert classification_metrics(labels, probs)["macro_f1"] == pytest.approx(result.best_metrics["macro_f1"])


@pytest.mark.slow
def test_checkpoint_loads_in_plain_python_without_this_project(folder_dataset, tmp_path):
    result = train(tiny_config(folder_dataset, epochs=1, output_dir=tmp_path))
    script = f"""
import json, sys, timm, torch
from safetensors import safe_open
from safetensors.torch import load_file
path = {str(result.checkpoint)!r}
meta = json.loads(safe_open(path, "pt").metadata()["search"])
model = timm.create_model(meta["model"], num_classes=meta["num_classes"])
model.load_state_dict(load_file(path))
model.eval()
x = torch.zeros(1, *meta["input_size"])
print(model(x).shape[1], any(m.split(".")[0] in ("training", "search") for m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.split() == ["3", "False"]


def test_checkpoint_write_is_atomic_no_temporary_left(folder_dataset, tmp_path):
    train(tiny_config(folder_dataset, epochs=2, output_dir=tmp_path / "out"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["best.safetensors"]


def test_nan_loss_stops_the_run_with_the_epoch(folder_dataset):
    with pytest.raises(NonFiniteLossError, match="epoch 0"):
        train(tiny_config(folder_dataset, epochs=2, optimizer={"lr": 1e30}, loss={"name": "cross_entropy"}))


def test_validation_runs_in_eval_mode_under_inference_mode(folder_dataset):
    config = tiny_config(folder_dataset)
    data = prepare_data(config.data, config.seed)
    _, val_loader = build_loaders(config, data)
    model = create_model(config.model, 3)
    modes = []
    model.register_forward_hook(lambda m, i, o: modes.append((m.training, torch.is_inference_mode_enabled())))
    predict_probs(model, val_loader, InputPipe((0.5,) * 3, (0.25,) * 3, torch.device("cpu")))
    assert modes and all(m == (False, True) for m in modes)


@pytest.mark.slow
def test_every_loss_and_scheduler_trains(folder_dataset):
    for loss in ("cross_entropy", "focal", "label_smoothing", "f1"):
        for scheduler in ("step", "cosine", "plateau"):
            result = train(
                tiny_config(
                    folder_dataset, epochs=1, loss={"name": loss}, scheduler={"name": scheduler, "warmup_steps": 2}
                )
            )
            assert 0 <= result.best_metrics["macro_f1"] <= 1


def test_balanced_sampling_and_rare_class_augmentation(folder_dataset):
    config = tiny_config(
        folder_dataset,
        augment={"balanced_sampling": True, "rare": [{"name": "HorizontalFlip", "p": 1.0}], "rare_fraction": 0.34},
    )
    data = prepare_data(config.data, config.seed)
    loader, _ = build_loaders(config, data)
    counts = np.bincount(data.decoded.labels[loader.order(0)], minlength=3)
    assert counts.min() > 0.5 * counts.max()  # drawn about equally despite 24/12/6 images
    assert loader.rare_classes.tolist() == [2]  # fox, the rarest
    images, labels = next(loader.batches(0))
    assert images.dtype == torch.uint8


def test_missing_weights_file_says_so_in_one_line(tmp_path):
    from training import ModelConfig

    with pytest.raises(
        SearchServiceError,
        match=r"could not load weights for test_resnet: model.weights .*nope.safetensors is not a file; ",
    ):
        create_model(ModelConfig(name="test_resnet", weights=tmp_path / "nope.safetensors"), 3)


def test_local_weights_file_loads_the_backbone_and_a_fresh_head(tmp_path):
    import timm
    from safetensors.torch import save_file

    from training import ModelConfig

    source = timm.create_model("test_resnet", num_classes=3)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
    model = create_model(ModelConfig(name="test_resnet", weights=tmp_path / "w.safetensors"), 3)
    loaded = model.state_dict()
    backbone = [k for k in source.state_dict() if not k.startswith("fc.")]
    assert len(backbone) > 10 and all(torch.equal(source.state_dict()[k], loaded[k]) for k in backbone)
    # timm re-creates a classifier whose class count differs from the weights' own (1000 here)


def test_hub_weights_are_asked_for_once_then_read_from_the_cache(hub_cache):
    from training import ModelConfig

    config = ModelConfig(name="test_resnet", pretrained=True)
    models = [create_model(config, 3) for _ in range(3)]
    assert hub_cache["asked"] == ["model.safetensors"]  # the first load only; the others read its file
    backbone = [k for k in hub_cache["weights"] if not k.startswith("fc.")]
    assert len(backbone) > 10
    for model in models:
        assert all(torch.equal(model.state_dict()[k], hub_cache["weights"][k]) for k in backbone)
    hub_cache["file"].unlink()  # the cache cleared: back to the hub, which is out of reach here
    with pytest.raises(SearchServiceError, match=r"could not load weights for test_resnet from timm's hub"):
        create_model(config, 3)
    assert hub_cache["asked"][:2] == ["model.safetensors"] * 2  # asked again (then for its .bin too)


def test_weights_not_from_the_hub_are_left_to_timm_and_looked_for_once(monkeypatch):
    import huggingface_hub

    from training import ModelConfig, models

    looked = []
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: looked.append(a) or None)
    models._remember_hub_file("test_resnet", {"hf_hub_id": "timm/test_resnet.r160_in1k"})  # not in the cache
    assert len(looked) == 2 and models._hub_files == {"test_resnet": None}  # safetensors, then the .bin
    assert models._weights_overlay(ModelConfig(name="test_resnet", pretrained=True)) is None  # timm's own way


def test_albumentations_own_serialised_form_is_accepted(folder_dataset):
    import albumentations as A

    serialised = A.to_dict(A.Compose([A.HorizontalFlip(p=1.0)]))
    config = tiny_config(folder_dataset, epochs=1, augment={"train": serialised})
    data = prepare_data(config.data, config.seed)
    loader, _ = build_loaders(config, data)
    images, _ = next(loader.batches(0))
    order = loader.order(0)[: len(images)]
    assert torch.equal(images, torch.from_numpy(data.decoded.images[order][:, :, ::-1].copy()))


@pytest.mark.slow
def test_compile_keeps_its_inductor_cache_in_the_shared_cache_folder_unless_the_user_chose_one(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    from training.accelerate import compiled

    config = tiny_config(compile=True, data={"cache_dir": str(tmp_path / "cache")})
    model = torch.nn.Linear(2, 2)
    # What importing timm leaves behind: torch's own per-user temporary folder.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    compiled(model, config)
    assert cache_dir() == str(tmp_path / "cache" / "inductor")  # where torch's compiler now writes

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    compiled(model, config)
    assert cache_dir() == str(tmp_path / "mine")


def test_a_compiled_model_trains_and_validation_runs_the_same_model_eager(folder_dataset, monkeypatch):
    """Only training steps go through ``train.compile``'s module (validation would be more graphs
    to compile), and validation sees the weights training changed."""
    through_compiled: list[bool] = []

    class Compiled(torch.nn.Module):  # stands in for torch.compile's wrapper: same parameters
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            through_compiled.append(torch.is_grad_enabled() and self.training)
            return self.model(x)

    monkeypatch.setattr(accelerate, "compiled", lambda model, config: Compiled(model))
    compiled_run = train(tiny_config(folder_dataset, compile=True))
    plain_run = train(tiny_config(folder_dataset))
    assert through_compiled and all(through_compiled)
    assert [h["macro_f1"] for h in compiled_run.history] == [h["macro_f1"] for h in plain_run.history]


def graph_capture_stand_in(captured: list) -> object:
    """Stands in for ``torch.cuda.make_graphed_callables`` on the CPU, doing to the module what it
    does: warm-up passes in training mode (they move the batch-norm statistics), then a forward of
    the module's own that "replays" (here: runs the module)."""

    def make_graphed_callables(module: torch.nn.Module, sample_args: tuple, **options) -> torch.nn.Module:
        assert not (torch.is_autocast_enabled() and torch.is_autocast_cache_enabled())  # as torch checks
        (sample,) = sample_args
        captured.append(sample.shape)
        for _ in range(3):
            module(sample)
        eager = module.forward
        module.forward = lambda x: eager(x)
        return module

    return make_graphed_callables


def test_cuda_graphs_capture_once_replay_full_batches_and_keep_the_model_and_its_statistics(monkeypatch):
    captured: list = []
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", graph_capture_stand_in(captured))
    model = create_model(tiny_config().model, 5)
    graphed = accelerate.CudaGraphed(model).train()
    x = torch.randn(8, 3, 16, 16)
    statistics = [buffer.clone() for buffer in model.buffers()]
    graphed.capture(x)
    assert captured == [x.shape] and "forward" not in vars(model)  # the module keeps its own forward
    assert all(torch.equal(a, b) for a, b in zip(statistics, model.buffers()))  # the warm-up's are undone
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())  # allocated, zero
    graphed(x), graphed(x[:3])
    assert graphed.replays == 1  # the other shape ran the model
    graphed.eval()
    graphed(x)
    assert graphed.replays == 1 and captured == [x.shape]


def test_cuda_graphs_train_as_the_plain_model_does_and_keep_gradients_allocated(folder_dataset, monkeypatch):
    """With accumulation, and with ``set_up`` giving the wrapper as on CUDA (on the CPU it gives the
    model: there are no CUDA graphs): the same epochs as without it, its gradients zeroed in place
    rather than dropped (a graph's gradient buffer taken as ``.grad`` would be overwritten)."""
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", graph_capture_stand_in([]))
    config = tiny_config(folder_dataset, cuda_graphs=True, accumulation_steps=2)
    on_the_cpu = set_up(config)
    assert on_the_cpu.forward is on_the_cpu.model  # nothing to capture
    real = setup.training_forward
    monkeypatch.setattr(setup, "training_forward", lambda model, config, device: accelerate.CudaGraphed(model))
    run = set_up(config)
    train_epoch(run, 0)
    assert run.forward.replays > 0 and all(p.grad is not None for p in run.model.parameters())
    graphed = train(config)
    monkeypatch.setattr(setup, "training_forward", real)
    plain = train(config)
    timed = "train_images_per_second"
    assert [h | {timed: 0} for h in graphed.history] == [h | {timed: 0} for h in plain.history]


@pytest.mark.parametrize("chosen", [None, "0"])
def test_albumentations_does_not_ask_pypi_for_updates_unless_the_user_wants_it(chosen):
    """Importing albumentations asks PyPI for a newer version (up to 2 s, a warning offline) in every
    worker process; the training package turns that off, and a user's own setting stands."""
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    if chosen is not None:
        env["NO_ALBUMENTATIONS_UPDATE"] = chosen
    code = "import os, training; print(os.environ['NO_ALBUMENTATIONS_UPDATE'])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert run.stdout.strip() == (chosen or "1")


def test_a_model_of_fixed_input_size_is_refused_at_another_size_before_training():
    from pydantic import ValidationError

    from training import TrainConfig

    config = {"model": {"name": "vit_tiny_patch16_224", "pretrained": False}, "data": {"image_size": 32}}
    with pytest.raises(ValidationError, match="takes only 224x224 images"):
        TrainConfig.model_validate(config)
    assert TrainConfig.model_validate({**config, "data": {"image_size": 224}}).data.image_size == (224, 224)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_asking_for_cuda_where_there_is_none_is_a_configuration_error():
    from training import ConfigError
    from training.setup import resolve_device

    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"train.device = '{name}', but torch finds no CUDA device here"):
            resolve_device(name)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")


def test_training_on_all_the_data_trains_every_image_and_replays_the_trials_schedule(folder_dataset, tmp_path):
    config = tiny_config(folder_dataset, scheduler={"name": "plateau", "plateau_factor": 0.5, "plateau_patience": 0})
    data = prepare_data(config.data, config.seed)
    assert len(data.val_idx) > 0
    run = set_up(config, all_data=True)
    assert run.data.train_idx.tolist() == list(range(len(data.decoded.labels)))  # the validation split trains too
    assert train_epoch(run, 0)[1] == len(data.decoded.labels)
    # a trial whose macro-F1 fell after its first epoch: plateau (patience 0) halved its rate twice
    out = train_on_all_data(config, [0.5, 0.4, 0.3], tmp_path / "all.safetensors")
    meta = read_meta(out)
    assert meta["trained_on"]["images"] == len(data.decoded.labels) and meta["metrics"] == {}
    assert meta["trained_on"]["epoch_lr"] == pytest.approx([3e-3, 3e-3, 1.5e-3])
    model, _ = load_checkpoint(out)
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)


# Gradient accumulation: micro-batches that add up to the gradient of their whole group.


def _linear_model():
    torch.manual_seed(0)
    # No batch-norm, no dropout: the update depends only on the mean gradient.
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5))


def _accumulated_step(batch_size, accumulation, n=32):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 4, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, n)
    loader = BatchLoader(images, labels, np.arange(n), batch_size, shuffle=False, seed=0)
    model = _linear_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    schedule = build_schedule(optimizer, SchedulerConfig(name="step", step_size=100), 1)
    pipe = InputPipe((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"))
    train_one_epoch(model, loader, 0, pipe, nn.CrossEntropyLoss(), optimizer, schedule, accumulation)
    return [p.detach().clone() for p in model.parameters()], schedule.steps


def test_four_micro_batches_of_eight_equal_one_batch_of_32():
    big, big_steps = _accumulated_step(32, 1)
    accumulated, steps = _accumulated_step(8, 4)
    assert big_steps == steps == 1
    for a, b in zip(big, accumulated):
        assert torch.allclose(a, b, atol=1e-6)


def test_trailing_partial_group_steps_and_is_weighted_by_its_size():
    # 40 samples in micro-batches of 8 with k = 4: one full group of 32, then a group of 8.
    weights = accumulation_weights([8, 8, 8, 8, 8], 4)
    assert weights == [(0.25, False), (0.25, False), (0.25, False), (0.25, True), (1.0, True)]
    # A short last micro-batch weighs by its share of its group.
    assert accumulation_weights([8, 8, 4], 2) == [(0.5, False), (0.5, True), (1.0, True)]
    assert accumulation_weights([8, 8, 8, 4], 4)[-1] == (4 / 28, True)


def test_gradients_are_zeroed_after_each_step():
    _, steps = _accumulated_step(8, 2)
    assert steps == 2  # 4 micro-batches, k = 2
