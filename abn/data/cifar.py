"""CIFAR-10 and CIFAR-100 (torchvision's on-disk format) with the ABN paper's preprocessing.

Augmentation: pad 4 + random 32×32 crop + horizontal flip; normalisation with the official code's statistics.
``val_size=0`` validates on the test set (as the paper did; we report last-epoch results, so nothing is selected
on it); ``val_size>0`` holds out that many training images, seeded, for model selection.
"""

from __future__ import annotations

import os
import pickle
from typing import Optional

from torchvision import datasets, transforms

from .base import ClassificationDataModule
from .device import OnDeviceLoaders

CIFAR10_CLASSES = 10
CIFAR100_CLASSES = 100
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _files_present(dataset_class: type, root: str) -> bool:
    folder = os.path.join(root, dataset_class.base_folder)
    names = [name for name, _ in dataset_class.train_list + dataset_class.test_list] + [dataset_class.meta["filename"]]
    return all(os.path.isfile(os.path.join(folder, name)) for name in names)


def _read_class_names(dataset: datasets.CIFAR10) -> None:
    with open(os.path.join(dataset.root, dataset.base_folder, dataset.meta["filename"]), "rb") as handle:
        dataset.classes = pickle.load(handle, encoding="latin1")[dataset.meta["key"]]
    dataset.class_to_idx = {name: i for i, name in enumerate(dataset.classes)}


class _PresentCIFAR10(datasets.CIFAR10):
    """Checks that the files are there; their MD5 sums are only checked by a download."""

    def _check_integrity(self) -> bool:
        return _files_present(type(self), self.root)

    def _load_meta(self) -> None:
        _read_class_names(self)


class _PresentCIFAR100(datasets.CIFAR100):
    def _check_integrity(self) -> bool:
        return _files_present(type(self), self.root)

    def _load_meta(self) -> None:
        _read_class_names(self)


class CIFARDataModule(OnDeviceLoaders, ClassificationDataModule):
    mean = CIFAR_MEAN
    std = CIFAR_STD
    dataset_class: type = _PresentCIFAR10
    download_class: type = datasets.CIFAR10
    archive = "cifar-10-python.tar.gz"
    title = "CIFAR-10"
    fixed_num_classes = CIFAR10_CLASSES
    input_size = 32

    def __init__(
        self,
        root: str = "data",
        num_classes: int = CIFAR10_CLASSES,
        in_chans: int = 3,
        val_size: int = 0,
        seed: int = 0,
        augment: bool = True,
        download: bool = True,
        batch_size: int = 128,
        num_workers: int = 2,
        pin_memory: bool = False,
        on_device: bool = False,
    ):
        super().__init__(num_classes, in_chans, batch_size, num_workers, pin_memory)
        self.on_device = on_device
        if in_chans != 3:
            raise ValueError(f"{self.title} images are RGB: in_chans must be 3, got {in_chans}")
        if val_size < 0:
            raise ValueError(f"val_size must be ≥ 0, got {val_size}")
        self.root, self.val_size, self.seed, self.augment, self.download = str(root), val_size, seed, augment, download

    def missing_data_message(self, reason: str = "") -> str:
        folder = os.path.join(self.root, self.dataset_class.base_folder)
        return (
            f"{self.title} was not found in {folder}" + (f" and could not be downloaded ({reason})" if reason else "")
            + f". Download {self.archive} from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it in "
            f"{self.root} (it creates {self.dataset_class.base_folder}/)"
            + (" on a machine with internet access and copy it here." if reason else
               ", or set data.download=true on a machine with internet access.")
        )

    def prepare_data(self) -> None:
        if _files_present(self.dataset_class, self.root):
            return
        if not self.download:
            raise FileNotFoundError(self.missing_data_message())
        try:
            self.download_class(self.root, train=True, download=True)  # torchvision checks the archive's MD5
        except Exception as error:  # no network, proxy, checksum: all end the same way for the user
            raise FileNotFoundError(self.missing_data_message(f"{type(error).__name__}: {error}")) from error

    def _transform(self, train: bool) -> transforms.Compose:
        steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train and self.augment else []
        return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])

    def device_augmentation(self) -> tuple[int, bool]:
        """What ``_transform(train=True)`` does, for ``on_device``: pad 4 and crop, flip."""
        return (4, True) if self.augment else (0, False)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()
        train = self.dataset_class(self.root, train=True, transform=self._transform(train=True))
        test = self.dataset_class(self.root, train=False, transform=self._transform(train=False))
        self.classes = list(train.classes)
        self.assign_splits(train, lambda: self.dataset_class(self.root, train=True, transform=self._transform(train=False)),
                           test, self.val_size, self.seed, self.root)


class CIFAR10DataModule(CIFARDataModule):
    """CIFAR-10: 50k training and 10k test images, 10 classes."""


class CIFAR100DataModule(CIFARDataModule):
    """CIFAR-100: 50k training and 10k test images, 100 classes."""

    dataset_class = _PresentCIFAR100
    download_class = datasets.CIFAR100
    archive = "cifar-100-python.tar.gz"
    title = "CIFAR-100"
    fixed_num_classes = CIFAR100_CLASSES

    def __init__(self, root: str = "data", num_classes: int = CIFAR100_CLASSES, **kwargs):
        super().__init__(root, num_classes, **kwargs)
