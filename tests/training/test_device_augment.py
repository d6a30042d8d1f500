"""The device augmentation path, run here on CPU tensors (the same code runs on CUDA tensors)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from training.data.loader import BatchLoader, DeviceBatchLoader
from training.device_augment import DeviceAugment, _Parameters, unsupported
from training.per_process import forget_all


@pytest.fixture
def images():
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 12, 16, 3), dtype=np.uint8))


def nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).float()


def test_flip_with_p_one_mirrors_exactly(images):
    out = DeviceAugment([{"name": "HorizontalFlip", "p": 1.0}], seed=0)(images)
    assert torch.allclose(out, nchw(images).flip(3), atol=1e-3)


@pytest.mark.parametrize(
    "step",
    [
        {"name": "HorizontalFlip", "p": 0.0},
        {"name": "Affine", "scale": [1.0, 1.0], "translate_percent": [0, 0], "rotate": [0, 0], "p": 1.0},
        {"name": "RandomBrightnessContrast", "brightness_limit": 0.3, "contrast_limit": 0.3, "p": 0.0},
        {"name": "RandomResizedCrop", "size": [12, 16], "scale": [1.0, 1.0], "ratio": [1.0, 1.0], "p": 1.0},
    ],
)
def test_identity_settings_leave_images_unchanged(images, step):
    assert torch.allclose(DeviceAugment([step], seed=0)(images), nchw(images), atol=1e-3)


def test_brightness_contrast_stays_within_its_limits(images):
    flat = torch.full((4, 8, 8, 3), 100, dtype=torch.uint8)
    out = DeviceAugment([{"name": "RandomBrightnessContrast", "brightness_limit": 0.1, "contrast_limit": 0.0,
                          "p": 1.0}], seed=1)(flat)  # fmt: skip
    shifts = out.amax(dim=(1, 2, 3)) - 100
    assert (shifts.abs() <= 25.5 + 1e-3).all() and (out.amin(dim=(1, 2, 3)) == out.amax(dim=(1, 2, 3))).all()


def test_translation_moves_content_by_the_drawn_share():
    image = torch.zeros(1, 8, 16, 3, dtype=torch.uint8)
    image[0, :, 4] = 255  # a vertical line at x = 4
    shifted = DeviceAugment([{"name": "Affine", "translate_percent": [0.25, 0.25], "p": 1.0}], seed=0)(image)
    assert shifted[0, 0, 4, 8] == pytest.approx(255, abs=1)  # moved right by 25% of 16 px


def test_draws_depend_on_seed_and_epoch_only(images):
    spec = [{"name": "Affine", "scale": [0.8, 1.2], "rotate": [-20, 20], "p": 0.7}, {"name": "HorizontalFlip"}]
    a, b = DeviceAugment(spec, seed=3), DeviceAugment(spec, seed=3)
    a.reseed(2)
    b.reseed(2)
    assert torch.equal(a(images), b(images))
    b.reseed(3)
    assert not torch.equal(a(images), b(images))


def test_which_pipelines_have_a_device_path():
    assert not unsupported([{"name": "HorizontalFlip", "p": 0.5}, {"name": "Affine", "rotate": [-5, 5]}])
    assert not unsupported([{"name": "HueSaturationValue"}, {"name": "CoarseDropout", "num_holes_range": [1, 4]}])
    assert unsupported([{"name": "GaussNoise"}])  # albumentations on the CPU
    assert unsupported([{"name": "CoarseDropout", "fill": "inpaint_telea"}])  # only a constant fill here
    assert unsupported([{"name": "Affine", "shear": 5}])  # a parameter this path does not model
    assert unsupported({"transform": {}})  # albumentations' own serialised form
    steps = [{"name": "HorizontalFlip"}, {"name": "GaussNoise"}, {"name": "Affine", "shear": 5, "rotate": 3},
             {"name": "CoarseDropout", "fill": "inpaint_telea"}]  # fmt: skip
    assert unsupported(steps) == ["GaussNoise", "Affine with shear", "CoarseDropout with fill 'inpaint_telea'"]


def test_device_loader_serves_the_same_order_and_labels_as_the_cpu_loader(images):
    labels = np.arange(6) % 3
    indices = np.arange(6)
    cpu = BatchLoader(images.numpy(), labels, indices, 4, shuffle=True, seed=5)
    device = DeviceBatchLoader(images, labels, indices, 4, shuffle=True, seed=5, device=torch.device("cpu"))
    for (x1, y1), (x2, y2) in zip(cpu.batches(1), device.batches(1)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    augmented = DeviceBatchLoader(images, labels, indices, 4, shuffle=True, seed=5, device=torch.device("cpu"),
                                  augment=DeviceAugment([{"name": "HorizontalFlip", "p": 1.0}], 0))  # fmt: skip
    x, _ = next(augmented.batches(1))
    assert x.dtype == torch.float32 and x.shape == (4, 3, 12, 16)


def test_device_training_batches_are_all_full_so_the_step_keeps_one_shape(images):
    labels, indices = np.arange(6) % 3, np.arange(6)
    train = DeviceBatchLoader(images, labels, indices, 4, shuffle=True, seed=5, device=torch.device("cpu"))
    assert [len(y) for _, y in train.batches(0)] == [4]  # the other 2 images come in other epochs
    assert len(set(np.concatenate([y.numpy() for e in range(6) for _, y in train.batches(e)]))) == 3
    val = DeviceBatchLoader(images, labels, indices, 4, shuffle=False, seed=5, device=torch.device("cpu"))
    assert [len(y) for _, y in val.batches(0)] == [4, 2]  # validation sees every image


def test_augmenting_a_float_batch_leaves_it_as_it_was(images):
    batch = nchw(images)
    before = batch.clone()
    spec = [{"name": "RandomBrightnessContrast", "brightness_limit": 0.3, "contrast_limit": 0.3, "p": 1.0}]
    out = DeviceAugment(spec, seed=0)(batch)
    assert torch.equal(batch, before) and not torch.equal(out, before)


@pytest.mark.parametrize("shifts", [(10, 0, 0), (0, 25, 0), (0, 0, -20), (-15, -20, 15)])
def test_hue_saturation_value_matches_albumentations_up_to_opencv_rounding(images, shifts):
    import albumentations as A

    hue, sat, val = shifts
    reference = A.HueSaturationValue(hue_shift_limit=(hue, hue), sat_shift_limit=(sat, sat),
                                     val_shift_limit=(val, val), p=1.0)  # fmt: skip
    step = {"name": "HueSaturationValue", "hue_shift_limit": [hue, hue], "sat_shift_limit": [sat, sat],
            "val_shift_limit": [val, val], "p": 1.0}  # fmt: skip
    out = DeviceAugment([step], seed=0)(images)
    for image, ours in zip(images.numpy(), out):
        expected = torch.from_numpy(reference(image=image)["image"]).permute(2, 0, 1).float()
        difference = (ours - expected).abs()
        # OpenCV's uint8 HSV keeps hue in 2-degree steps: a few levels apart at most, half a level on average.
        assert difference.mean() < 1.0 and difference.max() <= 6.0


def test_coarse_dropout_fills_whole_rectangles_inside_the_image():
    images = torch.full((8, 20, 30, 3), 200, dtype=torch.uint8)
    step = {"name": "CoarseDropout", "num_holes_range": [1, 1], "hole_height_range": [4, 4],
            "hole_width_range": [5, 5], "fill": 7, "p": 1.0}  # fmt: skip
    out = DeviceAugment([step], seed=1)(images)
    for image in out:
        hole = image[0] == 7
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert hole.sum() == 20 and len(rows) == 4 and len(cols) == 5  # one 4 x 5 rectangle, whole
        assert torch.all(image[:, ~hole] == 200)
    skipped = DeviceAugment([{**step, "p": 0.0}], seed=1)(images)
    assert torch.all(skipped == 200)


def test_hue_saturation_value_changes_a_share_p_of_the_images_and_leaves_the_others_exactly():
    images = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (41, 6, 6, 3), dtype=np.uint8))
    step = {"name": "HueSaturationValue", "hue_shift_limit": [20, 20], "sat_shift_limit": [30, 30],
            "val_shift_limit": [20, 20], "p": 0.3}  # fmt: skip
    augment, changed = DeviceAugment([step], seed=0), []
    for epoch in range(200):
        augment.reseed(epoch)
        out = augment(images)
        untouched = (out == nchw(images)).flatten(1).all(1)
        changed.append(int((~untouched).sum()))
    assert set(changed) == {12, 13}  # 0.3 x 41 = 12.3: twelve, or thirteen with chance 0.3
    assert np.mean(changed) == pytest.approx(12.3, abs=0.15)


class HostWaits(TorchDispatchMode):
    """Records the operations that make the host wait for a CUDA device: reading a value back
    (``.item()``, ``bool()``), sizes known only from the data (boolean masks, ``nonzero``), and host
    data of more than one element made into a tensor (then copied to the device, blocking)."""

    READS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
             "aten.is_nonzero.default", "aten.equal.default", "aten._unique2.default"}  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[str] = []
        self.parameter_copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        masks = name.startswith("aten.index") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()) or ()
        )
        host_data = name == "aten.lift_fresh.default" and args[0].numel() > 1
        if host_data and self._sending_parameters():
            self.parameter_copies += 1  # pinned and copied without waiting on CUDA: not a wait
        elif name in self.READS or masks or host_data:
            self.waits.append(name)
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _sending_parameters() -> bool:
        frame = sys._getframe()
        while frame is not None:
            if frame.f_code is _Parameters.send.__code__:
                return True
            frame = frame.f_back
        return False


@pytest.mark.parametrize("loss", ["cross_entropy", "focal", "label_smoothing", "f1"])
def test_a_training_epoch_on_the_device_path_waits_for_the_device_only_at_its_ends(loss):
    """Every wait for the GPU in a step leaves it idle while Python queues the next kernels. The mask
    study's device path (flip + affine composed, brightness / contrast, HSV on a subset, dropout on
    the rarest classes) through the real epoch loop, 5 steps: the epoch's order goes over once and
    its mean loss comes back once, nothing per step."""
    import timm

    from search.study import load_study
    from training.config import LossConfig, SchedulerConfig
    from training.loop import train_one_epoch
    from training.losses import build_loss
    from training.schedulers import build_schedule
    from training.setup import InputPipe

    augment = load_study("mask-lr-sweep", ["data.root=/unused"]).train.augment
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8))
    labels = np.arange(40) % 6
    cpu = torch.device("cpu")
    loader = DeviceBatchLoader(images, labels, np.arange(40), 8, shuffle=True, seed=0, device=cpu,
                               augment=DeviceAugment(augment.train, 0), rare_augment=DeviceAugment(augment.rare, 1),
                               rare_classes=[4, 5])  # fmt: skip
    model = timm.create_model("resnet10t", num_classes=6)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)  # as build_optimizer on CUDA
    schedule = build_schedule(optimizer, SchedulerConfig(name="cosine"), 2)
    loss_fn = build_loss(LossConfig(name=loss), np.bincount(labels))
    pipe = InputPipe((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), cpu)
    with HostWaits() as recorder:
        _, seen, _ = train_one_epoch(model, loader, 0, pipe, loss_fn, optimizer, schedule, accumulation_steps=2)
    assert seen == 40
    assert recorder.waits == ["aten.lift_fresh.default", "aten._local_scalar_dense.default"]
    # The augmentation's random parameters: one buffer per pipeline and batch at most (5 batches;
    # the second pipeline only for batches holding a rare-class image).
    assert 5 <= recorder.parameter_copies <= 10


def test_the_host_wait_recorder_sees_the_waits_it_looks_for():
    x = torch.rand(6)
    with HostWaits() as recorder:
        x[x > 0.5] = 0.0
        x.sum().item()
        torch.tensor([0.0, 0.0, 1.0])
        x.nonzero()
        torch.where(x > 0.2, 1.0, 0.0)  # no wait: the mask stays on the device
    assert recorder.waits == ["aten.index_put_.default", "aten._local_scalar_dense.default",
                              "aten.lift_fresh.default", "aten.nonzero.default"]  # fmt: skip


@pytest.mark.parametrize("flip_first, column", [(True, 15), (False, 7)])
def test_geometric_steps_compose_in_the_pipelines_order(flip_first, column):
    """One warp for the whole chain, equal to the steps one after the other: a line at x = 4 of 16,
    flipped (x = 11) then moved right by a quarter (x = 15), or moved (x = 8) then flipped (x = 7)."""
    image = torch.zeros(1, 8, 16, 3, dtype=torch.uint8)
    image[0, :, 4] = 255
    flip, shift = {"name": "HorizontalFlip", "p": 1.0}, {"name": "Affine", "translate_percent": [0.25, 0.25], "p": 1.0}
    out = DeviceAugment([flip, shift] if flip_first else [shift, flip], seed=0)(image)
    assert out[0, 0, 4].argmax() == column and out[0, 0, 4, column] == pytest.approx(255, abs=1)


def test_only_the_eligible_images_are_augmented_and_the_others_kept_exactly(images):
    spec = [{"name": "Affine", "rotate": [10, 20], "p": 1.0}, {"name": "RandomBrightnessContrast", "p": 1.0},
            {"name": "HueSaturationValue", "p": 1.0}, {"name": "CoarseDropout", "fill": 0, "p": 1.0}]  # fmt: skip
    eligible = np.array([True, False, True, False, False, True])
    batch = nchw(images)
    out = DeviceAugment(spec, seed=0)(batch.clone(), eligible=eligible, in_place=True)
    assert torch.equal(out[~torch.from_numpy(eligible)], batch[~torch.from_numpy(eligible)])
    assert all(not torch.equal(out[i], batch[i]) for i in np.flatnonzero(eligible))


def test_parameters_come_back_as_views_of_one_buffer_with_their_shapes_and_values():
    parameters = _Parameters()
    first, second = parameters.add(np.arange(6.0).reshape(2, 3)), parameters.add(np.array([True, False]))
    sent = parameters.send(torch.device("cpu"))
    assert sent[first].shape == (2, 3) and sent[first].dtype == torch.float32
    assert sent[first].tolist() == [[0, 1, 2], [3, 4, 5]] and sent[second].tolist() == [1.0, 0.0]
    assert sent[first].untyped_storage().data_ptr() == sent[second].untyped_storage().data_ptr()


class Kernels(TorchDispatchMode):
    """Counts the operations that launch work on the device (views and metadata changes do not)."""

    VIEWS = {"aten.view.default", "aten.unsqueeze.default", "aten.select.int", "aten.slice.Tensor",
             "aten.permute.default", "aten.expand.default", "aten.split_with_sizes.default", "aten.unbind.int",
             "aten.split.Tensor", "aten.detach.default", "aten._unsafe_view.default", "aten.alias.default",
             "aten.squeeze.dim", "aten.transpose.int", "aten.lift_fresh.default"}  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += str(func) not in self.VIEWS
        return func(*args, **(kwargs or {}))


def test_a_batch_of_the_mask_study_takes_few_device_operations_beside_the_model():
    """A small batch's step is bound by kernel launches (efficientnet_b0 at batch 64 on an H200), so
    each of the augmentation's launches costs about what a layer's does. Its random parameters are
    drawn on the host; the device does the pixel work (about 60 operations; 179 when the parameters
    were drawn there)."""
    from search.study import load_study

    augment = load_study("mask-lr-sweep", ["data.root=/unused"]).train.augment
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (128, 16, 16, 3), dtype=np.uint8))
    labels = np.arange(128) % 18  # every batch holds rare-class images, so both pipelines run
    loader = DeviceBatchLoader(images, labels, np.arange(128), 64, shuffle=True, seed=0, device=torch.device("cpu"),
                               augment=DeviceAugment(augment.train, 0), rare_augment=DeviceAugment(augment.rare, 1),
                               rare_classes=[15, 16, 17])  # fmt: skip
    batches = loader.batches(0)
    next(batches)  # the epoch's own work (its order sent over) comes with the first batch
    with Kernels() as kernels:
        images, _ = next(batches)
    assert images.shape == (64, 3, 16, 16)
    assert 20 < kernels.count <= 70


def test_a_rare_class_without_images_is_no_error(images):
    """The rarest classes can be ones with no image at all (class 5 of 0..5 here, label 5 absent)."""
    labels = np.array([0, 1, 2, 3, 4, 4])
    loader = DeviceBatchLoader(images, labels, np.arange(6), 3, shuffle=True, seed=0, device=torch.device("cpu"),
                               rare_augment=DeviceAugment([{"name": "HorizontalFlip", "p": 1.0}], 0),
                               rare_classes=[4, 5])  # fmt: skip
    served = [(x, y) for x, y in loader.batches(0)]
    assert sorted(int(v) for _, y in served for v in y) == sorted(labels.tolist())
    flipped = [x for x, y in served if (y == 4).any()]
    assert flipped and all(x.dtype == torch.float32 for x in flipped)  # the rare images went through the pipeline


def test_staged_batches_from_host_memory_are_the_direct_ones_and_stay_as_served():
    """The path for images that do not fit on the GPU: gathered on a thread into two reused buffers.
    Every batch is kept here until the end, so one overwritten by a later gather would show."""
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (23, 8, 6, 3), dtype=np.uint8))
    labels = np.arange(23) % 4
    for shuffle in (True, False):  # training (full batches) and validation (a short last one)
        made = [DeviceBatchLoader(images, labels, np.arange(23), 5, shuffle=shuffle, seed=2, device=torch.device("cpu"),
                                  staged=staged) for staged in (False, True)]  # fmt: skip
        assert made[1].staging is not None and made[0].staging is None
        direct, staged = ([(x, y) for epoch in (0, 1) for x, y in loader.batches(epoch)] for loader in made)
        assert [len(y) for _, y in staged] == ([5] * 4 if shuffle else [5, 5, 5, 5, 3]) * 2
        for (x1, y1), (x2, y2) in zip(direct, staged, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_images_that_do_not_fit_on_the_gpu_stay_where_they_are(monkeypatch):
    from training.data import loader

    images = np.zeros((4, 8, 8, 3), np.uint8)
    forget_all()  # this process's earlier images on the device, as in a new process
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (100, 10**9))  # 100 bytes free
    host = loader.resident_images(images, torch.device("cuda"))
    assert host.device.type == "cpu" and host.data_ptr() == images.ctypes.data  # no copy of its own
