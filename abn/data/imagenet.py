"""ImageNet (ILSVRC-2012) from the usual folder layout: ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*``.

Never downloads. Training: RandomResizedCrop 224 + horizontal flip; evaluation: resize 256, centre crop 224.
``val_size>0`` holds out training images for model selection; the official validation set is the test split.
"""

from __future__ import annotations

import os
from typing import Optional

from torchvision import datasets, transforms

from .base import ClassificationDataModule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetDataModule(ClassificationDataModule):
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(
        self,
        root: str = "data/imagenet",
        num_classes: int = 1000,
        in_chans: int = 3,
        image_size: int = 224,
        resize_size: int = 256,
        val_size: int = 0,
        seed: int = 0,
        batch_size: int = 256,
        num_workers: int = 8,
        pin_memory: bool = True,
    ):
        super().__init__(num_classes, in_chans, batch_size, num_workers, pin_memory)
        if in_chans != 3:
            raise ValueError(f"ImageNet images are RGB: in_chans must be 3, got {in_chans}")
        self.root, self.image_size, self.resize_size = str(root), image_size, resize_size
        self.val_size, self.seed = val_size, seed

    def missing_data_message(self, folder: str) -> str:
        return (
            f"ImageNet folder {folder} was not found or holds no class folders. Get ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar from https://image-net.org/download.php (an account is needed), unpack the "
            f"training archive's per-class tars into {os.path.join(self.root, 'train')}/<wnid>/ and sort the "
            f"validation images into {os.path.join(self.root, 'val')}/<wnid>/, or point data.root at such a folder."
        )

    def prepare_data(self) -> None:
        for split in ("train", "val"):
            folder = os.path.join(self.root, split)
            if not os.path.isdir(folder) or not any(entry.is_dir() for entry in os.scandir(folder)):
                raise FileNotFoundError(self.missing_data_message(folder))

    def _transform(self, train: bool) -> transforms.Compose:
        if train:
            steps = [transforms.RandomResizedCrop(self.image_size), transforms.RandomHorizontalFlip()]
        else:
            steps = [transforms.Resize(self.resize_size), transforms.CenterCrop(self.image_size)]
        return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])

    def _folder(self, split: str, train: bool) -> datasets.ImageFolder:
        return datasets.ImageFolder(os.path.join(self.root, split), transform=self._transform(train))

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()
        train, test = self._folder("train", train=True), self._folder("val", train=False)
        if len(train.classes) != self.num_classes or test.classes != train.classes:
            raise ValueError(
                f"{self.root}: train has {len(train.classes)} class folders and val {len(test.classes)}; both must "
                f"have the same {self.num_classes} (set data.num_classes for a subset)"
            )
        self.classes = list(train.classes)
        self.assign_splits(train, lambda: self._folder("train", train=False), test, self.val_size, self.seed, self.root)
