"""The size of the images each data module yields, the default arch it leads to (``model.arch: null``), the note
on a chosen arch made for images of another size, and training images without augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from abn.data import (CelebADataModule, CIFAR10DataModule, CIFAR100DataModule, ClassificationDataModule,
                      ClutteredFashionMNISTDataModule, CompCarsDataModule, FashionMNISTDataModule, FolderDataModule,
                      ImageNetDataModule, ShapesDataModule, SVHNDataModule)
from abn.models.registry import arch_size_note, default_arch_for

from ..conftest import make_fashion_mnist


@pytest.mark.parametrize("make, input_size, arch", [
    (ShapesDataModule, 32, "resnet20"),
    (CIFAR10DataModule, 32, "resnet20"),
    (CIFAR100DataModule, 32, "resnet20"),
    (SVHNDataModule, 32, "resnet20"),
    (FashionMNISTDataModule, 28, "resnet20"),
    (ClutteredFashionMNISTDataModule, 64, "resnet20"),
    (FolderDataModule, 224, "resnet18"),
    (lambda: FolderDataModule(image_size=32), 32, "resnet20"),
    (lambda: FolderDataModule(image_size=96), 96, "resnet18"),
    (ImageNetDataModule, 224, "resnet18"),
    (CompCarsDataModule, (224, 323), "resnet18"),
    (lambda: CompCarsDataModule(image_size=[48, 64]), (48, 64), "resnet20"),
    (CelebADataModule, 224, "resnet18"),
    (lambda: CelebADataModule(image_size=64), 64, "resnet20"),
])
def test_default_arch_follows_the_image_size(make, input_size, arch):
    module = make()
    assert module.input_size == input_size and default_arch_for(module.input_size) == arch


def test_cluttered_input_size_is_the_canvas():
    module = ClutteredFashionMNISTDataModule(canvas_size=160, max_scale=100)
    assert module.input_size == 160 and default_arch_for(module.input_size) == "resnet18"


def test_a_module_that_does_not_know_its_size_asks_for_an_arch():
    module = ClassificationDataModule(num_classes=2, in_chans=3, batch_size=4, num_workers=0, pin_memory=False)
    with pytest.raises(NotImplementedError, match="set model.arch"):
        module.input_size


def test_cifar_network_on_large_images_gets_a_note():
    note = arch_size_note("resnet20", 224)
    assert note.startswith("model.arch=resnet20 is a network for 32-px")
    assert "7× as wide" in note and "49×" in note and "model.arch=resnet18" in note and "pretrained=true" in note
    assert "224×323 px" in arch_size_note("wrn28_10", (224, 323))
    assert arch_size_note("densenet_bc100", 128) is not None


def test_imagenet_network_on_small_images_gets_a_note():
    note = arch_size_note("resnet18", 32)
    assert note.startswith("model.arch=resnet18 is an ImageNet network for 224-px images and these are 32 px")
    assert "7× per side" in note and "model.arch=resnet20" in note and "resnet56" in note
    assert arch_size_note("vgg16", 64) is not None


@pytest.mark.parametrize("arch, input_size", [
    ("resnet20", 32), ("resnet56", 64), ("resnet20", 96),  # a CIFAR network up to 127 px: no note
    ("resnet18", 224), ("resnet50", 96), ("vgg16", (224, 323)),  # an ImageNet network above 64 px: no note
    ("torchvision:resnet18", 32), ("torchvision:resnet18", 224),  # any size
    ("resnet21", 224),  # unknown: building the model names the valid archs
])
def test_no_note_where_the_arch_fits_or_is_not_registered(arch, input_size):
    assert arch_size_note(arch, input_size) is None


def training_image_draws(module: ClassificationDataModule, draws: int = 6) -> list:
    """The first training image, drawn ``draws`` times after one seed (its random crop and flip differ per draw)."""
    module.setup("fit")
    torch.manual_seed(0)
    return [module.train_set[0][0] for _ in range(draws)]


def shapes(tmp_path: Path) -> ClassificationDataModule:
    return ShapesDataModule(train_size=16, val_size=8, test_size=8)


def cluttered(tmp_path: Path) -> ClassificationDataModule:
    system_copy = make_fashion_mnist(tmp_path / "fashion-mnist")
    return ClutteredFashionMNISTDataModule(root=str(tmp_path / "data"), search_dirs=[str(system_copy)], download=False,
                                           train_size=16, val_size=8)


def folder(tmp_path: Path) -> ClassificationDataModule:
    for name in ("a", "b"):
        (tmp_path / "images" / name).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(
                tmp_path / "images" / name / f"{i}.png")
    return FolderDataModule(root=str(tmp_path / "images"), image_size=32, batch_size=4)


@pytest.mark.parametrize("make", [shapes, cluttered, folder])
def test_without_augmentation_a_training_image_is_the_same_at_every_draw(make, tmp_path: Path):
    """``augment = False`` (how scripts/export_maps.py shows training images as they are) switches off the random
    crop and flip of the training split."""
    augmented = training_image_draws(make(tmp_path))
    assert any(not torch.equal(augmented[0], image) for image in augmented[1:])
    module = make(tmp_path)
    module.augment = False
    plain = training_image_draws(module)
    assert all(torch.equal(plain[0], image) for image in plain[1:])


@pytest.mark.parametrize("module", [CelebADataModule(), CompCarsDataModule(), ImageNetDataModule(),
                                    CIFAR10DataModule(), SVHNDataModule(), FashionMNISTDataModule()],
                         ids=lambda module: type(module).__name__)
def test_without_augmentation_the_training_transform_is_the_evaluation_transform(module):
    assert repr(module._transform(True)) != repr(module._transform(False))
    module.augment = False
    assert repr(module._transform(True)) == repr(module._transform(False))
