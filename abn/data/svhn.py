"""SVHN (cropped digits, torchvision's .mat files): train, test and the optional 531k ``extra`` images.

``use_extra=true`` trains on train+extra, the larger setting of the literature. No horizontal flip (digits are
not mirror-symmetric); pad 4 + random crop 32 as for CIFAR.
"""

from __future__ import annotations

import os
from typing import Optional

from torch.utils.data import ConcatDataset
from torchvision import datasets, transforms

from .base import ClassificationDataModule
from .device import OnDeviceLoaders


SVHN_CLASSES = 10  # the digits 0–9


class _PresentSVHN(datasets.SVHN):
    """Checks that the split's file is there; its MD5 sum is only checked by a download."""

    def _check_integrity(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))


class SVHNDataModule(OnDeviceLoaders, ClassificationDataModule):
    mean = (0.4377, 0.4438, 0.4728)
    std = (0.1980, 0.2010, 0.1970)
    input_size = 32
    title = "SVHN"
    fixed_num_classes = SVHN_CLASSES

    def __init__(
        self,
        root: str = "data",
        num_classes: int = SVHN_CLASSES,
        in_chans: int = 3,
        use_extra: bool = False,
        val_size: int = 0,
        seed: int = 0,
        augment: bool = True,
        hflip: bool = False,
        download: bool = True,
        batch_size: int = 128,
        num_workers: int = 2,
        pin_memory: bool = False,
        on_device: bool = False,
    ):
        super().__init__(num_classes, in_chans, batch_size, num_workers, pin_memory)
        self.on_device = on_device
        if in_chans != 3:
            raise ValueError(f"SVHN images are RGB: in_chans must be 3, got {in_chans}")
        if val_size < 0:
            raise ValueError(f"val_size must be ≥ 0, got {val_size}")
        self.root, self.use_extra, self.val_size, self.seed = os.path.join(str(root), "svhn"), use_extra, val_size, seed
        self.augment, self.hflip, self.download = augment, hflip, download
        self.classes = [str(digit) for digit in range(SVHN_CLASSES)]

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "test", "extra") if self.use_extra else ("train", "test")

    def missing_data_message(self, missing: str, reason: str = "") -> str:
        return (
            f"SVHN file {os.path.join(self.root, missing)} was not found"
            + (f" and could not be downloaded ({reason})" if reason else "")
            + f". Download {missing} (format 2, cropped digits) from http://ufldl.stanford.edu/housenumbers/ into "
            f"{self.root}" + (" (on a machine with internet access, then copy it here)." if reason else
                              ", or set data.download=true on a machine with internet access.")
        )

    def prepare_data(self) -> None:
        for split in self.splits:
            filename = _PresentSVHN.split_list[split][1]
            if os.path.isfile(os.path.join(self.root, filename)):
                continue
            if not self.download:
                raise FileNotFoundError(self.missing_data_message(filename))
            try:
                datasets.SVHN(self.root, split=split, download=True)
            except Exception as error:
                raise FileNotFoundError(self.missing_data_message(filename, f"{type(error).__name__}: {error}")) from error

    def _transform(self, train: bool) -> transforms.Compose:
        steps = [transforms.RandomCrop(32, padding=4)] if train and self.augment else []
        if train and self.augment and self.hflip:
            steps.append(transforms.RandomHorizontalFlip())
        return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])

    def device_augmentation(self) -> tuple[int, bool]:
        """What ``_transform(train=True)`` does, for ``on_device``: pad 4 and crop, flip only with ``hflip``."""
        return (4, self.hflip) if self.augment else (0, False)

    def _training_images(self, train: bool):
        parts = [_PresentSVHN(self.root, split=s, transform=self._transform(train)) for s in self.splits if s != "test"]
        return parts[0] if len(parts) == 1 else ConcatDataset(parts)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()
        train = self._training_images(train=True)
        test = _PresentSVHN(self.root, split="test", transform=self._transform(train=False))
        self.assign_splits(train, lambda: self._training_images(train=False), test, self.val_size, self.seed, self.root)
