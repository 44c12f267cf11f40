"""The device-resident path (``on_device=true``) against the DataLoader path, on tiny copies in the real formats."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.data import _set_sampler_epoch
from torchvision import transforms

from abn.data import CIFAR10DataModule, FashionMNISTDataModule, ShapesDataModule, SVHNDataModule
from abn.data.device import DeviceBatches, crop_and_flip, raw_arrays
from abn.data.standins import write_standin_cifar, write_standin_svhn

from ..conftest import compose_train_config, make_fashion_mnist


def cifar(root: Path, **options) -> CIFAR10DataModule:
    if not (root / "cifar-10-batches-py").is_dir():
        write_standin_cifar(root, hundred=False, train_per_file=6, test=5)  # 30 training images, 5 test images
    module = CIFAR10DataModule(root=str(root), download=False, num_workers=0, **{"batch_size": 4, **options})
    module.setup()
    return module


def svhn(root: Path, **options) -> SVHNDataModule:
    if not (root / "svhn").is_dir():
        write_standin_svhn(root, {"train": 7, "test": 5, "extra": 9})
    module = SVHNDataModule(root=str(root), download=False, num_workers=0, **{"batch_size": 4, **options})
    module.setup()
    return module


def fashion_mnist(root: Path, **options) -> FashionMNISTDataModule:
    make_fashion_mnist(root / "FashionMNIST" / "raw", train=60, test=20, compress=False)
    module = FashionMNISTDataModule(root=str(root), search_dirs=[], download=False, num_workers=0,
                                    **{"batch_size": 8, "val_size": 12, **options})
    module.setup()
    return module


def everything(loader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return torch.cat([images for images, *_ in batches]), torch.cat([labels for _, labels, *_ in batches])


def numbered_batches(count: int = 12, size: int = 6, channels: int = 3, **options) -> DeviceBatches:
    """Images whose label is their index and whose pixels are distinct, so that crops can be traced."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (count, channels, size, size), dtype=torch.uint8, generator=generator)
    options = {"batch_size": 4, **options}
    return DeviceBatches(images, torch.arange(count), (0.5,) * channels, (0.25,) * channels, **options)


MODULES = {
    "cifar10": lambda root, **options: cifar(root, val_size=8, seed=3, **options),
    "svhn": lambda root, **options: svhn(root, use_extra=True, **options),
    "fashion_mnist": lambda root, **options: fashion_mnist(root, **options),
    "fashion_mnist_rgb": lambda root, **options: fashion_mnist(root, in_chans=3, **options),
}


@pytest.mark.parametrize("name", MODULES)
def test_eval_batches_equal_the_dataloader_path_in_order(tmp_path, name):
    module = MODULES[name](tmp_path)
    for split in ("val", "test"):
        expected_images, expected_labels = everything(getattr(module, f"{split}_dataloader")())
        module.on_device = True
        loader = getattr(module, f"{split}_dataloader")()
        module.on_device = False
        assert isinstance(loader, DeviceBatches) and len(loader) == len(getattr(module, f"{split}_dataloader")())
        images, labels = everything(loader)
        assert images.dtype == torch.float32 and labels.dtype == torch.int64 and images.device.type == "cpu"
        assert images.shape == expected_images.shape and images.shape[1] == module.in_chans
        torch.testing.assert_close(images, expected_images, atol=1e-6, rtol=0)
        assert labels.tolist() == expected_labels.tolist()


@pytest.mark.parametrize("name", MODULES)
def test_training_batches_hold_the_training_split_once_per_epoch(tmp_path, name):
    module = MODULES[name](tmp_path, augment=False, batch_size=1)  # batches of 1: every image, none dropped
    module.on_device = True
    images, labels = everything(module.train_dataloader())
    module.on_device = False
    expected_images, expected_labels = everything(module.train_dataloader())
    assert Counter(labels.tolist()) == Counter(expected_labels.tolist())
    assert sorted(map(tuple, images.flatten(1).tolist())) == sorted(map(tuple, expected_images.flatten(1).tolist()))


def test_training_batches_shapes_and_dropped_last_batch(tmp_path):
    module = cifar(tmp_path, batch_size=4, on_device=True)
    loader = module.train_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == 7  # 30 images: 7 full batches, the last 2 dropped like the DataLoader's
    assert all(images.shape == (4, 3, 32, 32) and labels.shape == (4,) for images, labels in batches)
    assert (loader.padding, loader.hflip, loader.shuffle) == (4, True, True)


def test_held_out_split_is_the_dataloader_paths(tmp_path):
    module = cifar(tmp_path, val_size=8, seed=3)
    data, targets = raw_arrays(module.train_set.dataset)
    val_images, val_labels = raw_arrays(module.val_set)
    index = torch.tensor(module.val_set.indices)
    assert torch.equal(val_images, data[index]) and torch.equal(val_labels, targets[index])
    train_images, _ = raw_arrays(module.train_set)
    assert torch.equal(train_images, data[torch.tensor(module.train_set.indices)])
    assert len(module.train_set.indices) + len(index) == len(data)


def cpu_augmentation(transform: transforms.Compose) -> tuple[int, bool]:
    """(padding, flip) of a torchvision training transform."""
    padding = [step.padding for step in transform.transforms if isinstance(step, transforms.RandomCrop)]
    flips = [step.p for step in transform.transforms if isinstance(step, transforms.RandomHorizontalFlip)]
    assert flips in ([], [0.5])
    return (padding[0] if padding else 0), bool(flips)


@pytest.mark.parametrize("module_class, options", [
    (CIFAR10DataModule, {}), (CIFAR10DataModule, {"augment": False}),
    (SVHNDataModule, {}), (SVHNDataModule, {"hflip": True}), (SVHNDataModule, {"augment": False, "hflip": True}),
    (FashionMNISTDataModule, {}), (FashionMNISTDataModule, {"augment": False}),
])
def test_device_augmentation_is_the_cpu_transforms(module_class, options):
    module = module_class(**options)
    assert module.device_augmentation() == cpu_augmentation(module._transform(train=True))


def test_epochs_reshuffle_and_the_seed_reproduces_them():
    loader = numbered_batches(padding=2, hflip=True, shuffle=True, seed=5)
    first, second = everything(loader), everything(loader)
    assert first[1].tolist() != second[1].tolist() and sorted(first[1].tolist()) == sorted(second[1].tolist())
    again = numbered_batches(padding=2, hflip=True, shuffle=True, seed=5)
    for a, b in zip((first, second), (everything(again), everything(again))):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    _set_sampler_epoch(again, 1)  # what Lightning does at the start of every epoch
    assert again.epoch == 1 and torch.equal(everything(again)[0], second[0])
    other_seed = numbered_batches(padding=2, hflip=True, shuffle=True, seed=6)
    assert everything(other_seed)[1].tolist() != first[1].tolist()


def test_eval_order_is_fixed():
    loader = numbered_batches(count=10)
    assert everything(loader)[1].tolist() == everything(loader)[1].tolist() == list(range(10))
    assert len(loader) == 3  # no batch dropped


def reference_crop(image: torch.Tensor, top: int, left: int, padding: int, flip: bool) -> torch.Tensor:
    height, width = image.shape[1:]
    window = F.pad(image, (padding,) * 4)[:, top : top + height, left : left + width]
    return window.flip(-1) if flip else window


def test_crop_is_a_window_of_the_zero_padded_image():
    images = numbered_batches(count=5).images
    offsets = torch.tensor([[0, 0], [4, 4], [1, 3], [2, 0], [3, 1]])
    flips = torch.tensor([False, True, False, True, False])
    cropped = crop_and_flip(images, offsets, flips, padding=2)
    for i in range(5):
        assert torch.equal(cropped[i], reference_crop(images[i], *offsets[i].tolist(), 2, bool(flips[i])))
    assert (cropped[0, :, :2, :] == 0).all() and (cropped[1, :, -2:, :] == 0).all()  # zero padding shows


def test_training_batches_are_the_planned_crops_and_flips():
    loader = numbered_batches(count=8, padding=3, hflip=True, shuffle=True, batch_size=8)
    order, offsets, flips = loader.epoch_plan(0)
    images, labels = next(iter(loader))
    assert labels.tolist() == order.tolist()
    for i, index in enumerate(order.tolist()):
        expected = reference_crop(loader.images[index], *offsets[i].tolist(), 3, bool(flips[i]))
        torch.testing.assert_close(images[i], loader.normalize(expected[None])[0], atol=0, rtol=0)


def test_offsets_cover_the_padding_and_about_half_is_flipped():
    loader = numbered_batches(count=4000, size=4, padding=4, hflip=True, shuffle=True)
    _, offsets, flips = loader.epoch_plan(0)
    assert offsets.min() == 0 and offsets.max() == 8 and len(offsets.unique()) == 9
    assert 0.45 < flips.float().mean() < 0.55
    no_flip = numbered_batches(count=100, padding=4, hflip=False, shuffle=True)
    assert not no_flip.epoch_plan(0)[2].any()


def test_flips_happen_about_half_the_time_in_the_batches():
    # one image, no crop: each output is the image or its mirror
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(2000, 1, 1, 1)
    loader = DeviceBatches(image, torch.zeros(2000), (0.0,), (1.0,), batch_size=500, shuffle=True, hflip=True)
    images, _ = everything(loader)
    plain, mirrored = image[0].float() / 255, image[0].flip(-1).float() / 255
    is_plain = (images == plain).flatten(1).all(1)
    is_mirrored = (images == mirrored).flatten(1).all(1)
    assert (is_plain ^ is_mirrored).all() and 0.45 < is_mirrored.float().mean() < 0.55


@pytest.mark.parametrize("count, shuffle", [(12, True), (10, True), (10, False)])
def test_ranks_take_disjoint_equal_shards(count, shuffle):
    shards = [everything(numbered_batches(count=count, batch_size=2, shuffle=shuffle, rank=rank, world_size=3))[1]
              for rank in range(3)]
    lengths = {len(numbered_batches(count=count, batch_size=2, shuffle=shuffle, rank=rank, world_size=3))
               for rank in range(3)}
    assert len(lengths) == 1  # every rank runs as many steps
    seen = Counter(label for shard in shards for label in shard.tolist())
    assert set(seen) == set(range(count))
    assert sum(seen.values()) - count == (-count) % 3  # only the padding of the last round repeats images


def test_module_shards_by_the_trainers_rank(tmp_path):
    module = cifar(tmp_path, batch_size=5, on_device=True)
    shards = []
    for rank in range(2):
        strategy = SimpleNamespace(root_device=torch.device("cpu"))
        module.trainer = SimpleNamespace(global_rank=rank, world_size=2, strategy=strategy)
        loader = module.train_dataloader()
        assert (loader.rank, loader.world_size, len(loader)) == (rank, 2, 3)
        shards.append(set(map(tuple, loader.images[loader.epoch_plan(0)[0]].flatten(1).tolist())))
    assert not shards[0] & shards[1] and len(shards[0]) == len(shards[1]) == 15


def test_the_seed_is_the_runs(tmp_path, monkeypatch):
    module = cifar(tmp_path, on_device=True, seed=3)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert module.train_dataloader().seed == 3
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")
    assert module.train_dataloader().seed == 11


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="on_device=true works for CIFAR-10/100, SVHN and Fashion-MNIST"):
        raw_arrays(ShapesDataModule(train_size=2)._make("train"))
    with pytest.raises(ValueError, match="uint8"):
        DeviceBatches(torch.zeros(2, 3, 4, 4), torch.zeros(2), (0.0,) * 3, (1.0,) * 3, batch_size=1)
    with pytest.raises(ValueError, match="one value per stored channel"):
        DeviceBatches(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2), (0.0,), (1.0,), batch_size=1)
    with pytest.raises(ValueError, match="rank 2 is not one of the 2 ranks"):
        numbered_batches(rank=2, world_size=2)
    with pytest.raises(RuntimeError, match="setup"):
        CIFAR10DataModule(on_device=True).train_dataloader()


def test_fast_dev_run_through_hydra_on_device(tmp_path, fashion_mnist_system_copy, monkeypatch):
    from hydra.core.global_hydra import GlobalHydra

    from abn.train import train

    iterated = []
    original = DeviceBatches.__iter__

    def counting(self):
        iterated.append((self.shuffle, self.padding, self.hflip))
        return original(self)

    monkeypatch.setattr(DeviceBatches, "__iter__", counting)
    cfg = compose_train_config(tmp_path, [
        "experiment=fashion_mnist", "data.on_device=true", f"+data.search_dirs=[{fashion_mnist_system_copy}]",
        "data.download=false", "data.val_size=20", "data.num_workers=0", "data.batch_size=8",
        "trainer=cpu", "trainer.fast_dev_run=true", "logger=none", "callbacks=none", f"paths.output_dir={tmp_path}",
    ])
    try:
        metrics = train(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert (True, 2, True) in iterated and (False, 0, False) in iterated  # training, then validation and test


def test_a_resumed_pass_continues_the_epoch_after_the_batches_done():
    whole_epoch_1 = numbered_batches(padding=2, hflip=True, shuffle=True, seed=5)
    _set_sampler_epoch(whole_epoch_1, 1)
    images, labels = everything(whole_epoch_1)
    positions = iter([(1, 2), None])  # a checkpoint written after 2 batches of epoch 1, then plain epochs
    resumed = numbered_batches(padding=2, hflip=True, shuffle=True, seed=5)
    resumed.resume = lambda: next(positions)
    rest_images, rest_labels = everything(resumed)
    batch = resumed.batch_size
    assert torch.equal(rest_labels, labels[2 * batch:]) and torch.equal(rest_images, images[2 * batch:])
    assert resumed.epoch == 2 and everything(resumed)[1].tolist() != rest_labels.tolist()  # then epoch 2, whole
