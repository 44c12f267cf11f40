"""ImageNet (ILSVRC-2012), never downloaded, from either of two layouts under ``root``:

* class folders: ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*`` (``scripts/imagenet_val_folders.py``
  sorts the official validation archive into them);
* torchvision's archive layout: ``ILSVRC2012_img_train.tar``, ``ILSVRC2012_img_val.tar`` and
  ``ILSVRC2012_devkit_t12.tar.gz`` in ``<root>``; ``prepare_data`` unpacks them once, through torchvision (which
  checks their MD5 sums), into the class folders above and ``meta.bin`` (the class names).

Training: RandomResizedCrop 224 + horizontal flip; evaluation: resize 256, centre crop 224.
``val_size>0`` holds out training images for model selection; the official validation set is the test split.
"""

from __future__ import annotations

import os
from typing import Optional

from torchvision import transforms
from torchvision.datasets import imagenet as tv_imagenet

from .base import IMAGENET_MEAN, IMAGENET_STD, ClassificationDataModule
from .folder import class_folder_samples
from .images import ImageFiles

IMAGENET_CLASSES = 1000  # ILSVRC-2012; a subset of its class folders is another count (data.num_classes)
ARCHIVES = {split: name for split, (name, _) in tv_imagenet.ARCHIVE_META.items()}


def has_class_folders(folder: str) -> bool:
    return os.path.isdir(folder) and any(entry.is_dir() for entry in os.scandir(folder))


class ImageNetDataModule(ClassificationDataModule):
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(
        self,
        root: str = "data/imagenet",
        num_classes: int = IMAGENET_CLASSES,
        in_chans: int = 3,
        image_size: int = 224,
        resize_size: int = 256,
        val_size: int = 0,
        seed: int = 0,
        strict: bool = False,
        batch_size: int = 256,
        num_workers: int = 8,
        pin_memory: bool = True,
    ):
        super().__init__(num_classes, in_chans, batch_size, num_workers, pin_memory)
        if in_chans != 3:
            raise ValueError(f"ImageNet images are RGB: in_chans must be 3, got {in_chans}")
        self.root, self.image_size, self.resize_size = str(root), image_size, resize_size
        self.val_size, self.seed, self.strict = val_size, seed, strict
        self.class_descriptions: dict[str, str] = {}

    def missing_data_message(self, folder: str) -> str:
        flat = os.path.isdir(folder) and any(name.lower().endswith(".jpeg") for name in os.listdir(folder)[:100])
        if flat:
            return (f"{folder} holds the validation images unsorted; sort them into class folders with "
                    f"`python scripts/imagenet_val_folders.py --val {folder} --devkit <ILSVRC2012_devkit_t12.tar.gz> "
                    f"--out {folder} --move`")
        return (
            f"ImageNet folder {folder} was not found or holds no class folders. Get {ARCHIVES['train']}, "
            f"{ARCHIVES['val']} and {ARCHIVES['devkit']} from https://image-net.org/download.php (an account is "
            f"needed) and either put the three archives in {self.root} (they are unpacked on first use) or unpack the "
            f"training archive's per-class tars into {os.path.join(self.root, 'train')}/<wnid>/ and sort the "
            f"validation images into {os.path.join(self.root, 'val')}/<wnid>/ with scripts/imagenet_val_folders.py"
        )

    def _archive(self, split: str) -> Optional[str]:
        path = os.path.join(self.root, ARCHIVES[split])
        return path if os.path.isfile(path) else None

    def prepare_data(self) -> None:
        """Unpack torchvision's archive layout where the class folders are missing; then check both splits."""
        for split in ("train", "val"):
            folder = os.path.join(self.root, split)
            if has_class_folders(folder) or not self._archive(split):
                continue
            if not self._archive("devkit") and not os.path.isfile(os.path.join(self.root, tv_imagenet.META_FILE)):
                raise FileNotFoundError(f"{self._archive(split)} is there but {ARCHIVES['devkit']} is not: put the "
                                        f"devkit archive (same download page) in {self.root} to unpack it")
            print(f"Unpacking {self._archive(split)} into {folder} (once; this takes a while for the full data set)")
            tv_imagenet.ImageNet(self.root, split=split)  # checks MD5 sums, writes meta.bin and the class folders
        for split in ("train", "val"):
            folder = os.path.join(self.root, split)
            if not has_class_folders(folder):
                raise FileNotFoundError(self.missing_data_message(folder))

    def _read_descriptions(self) -> None:
        """Human-readable class names from torchvision's meta.bin, where the archive layout left one."""
        meta = os.path.join(self.root, tv_imagenet.META_FILE)
        if os.path.isfile(meta):
            wnid_to_names = tv_imagenet.load_meta_file(self.root)[0]
            self.class_descriptions = {wnid: ", ".join(names) for wnid, names in wnid_to_names.items()}

    def discover_classes(self) -> list[str]:
        self.prepare_data()
        self.set_discovered_classes(class_folder_samples(os.path.join(self.root, "train"))[0])
        return self.classes

    def _transform(self, train: bool) -> transforms.Compose:
        if train and self.augment:
            steps = [transforms.RandomResizedCrop(self.image_size), transforms.RandomHorizontalFlip()]
        else:
            steps = [transforms.Resize(self.resize_size), transforms.CenterCrop(self.image_size)]
        return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()
        classes, train_paths, train_labels = class_folder_samples(os.path.join(self.root, "train"))
        val_folder = os.path.join(self.root, "val")
        val_classes = sorted(entry.name for entry in os.scandir(val_folder) if entry.is_dir())
        if val_classes != classes or (self.num_classes is not None and len(classes) != self.num_classes):
            raise ValueError(
                f"{self.root}: train has {len(classes)} class folders and val {len(val_classes)}; both must have the "
                f"same {self.num_classes} (set data.num_classes for a subset, or null to take the training folder's)"
            )
        self.set_discovered_classes(classes)
        self._read_descriptions()
        _, test_paths, test_labels = class_folder_samples(val_folder, classes)

        def files(paths: list[str], labels: list[int], train: bool) -> ImageFiles:
            return ImageFiles(paths, labels, self._transform(train), strict=self.strict)

        self.assign_splits(files(train_paths, train_labels, True), lambda: files(train_paths, train_labels, False),
                           files(test_paths, test_labels, False), self.val_size, self.seed, self.root)
