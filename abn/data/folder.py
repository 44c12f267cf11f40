"""Any folder of images sorted into class folders (``data=folder data.root=…``), so ABN trains on a user's own images.

Two layouts are accepted:

* split folders: ``<root>/train/<class>/*``, and optionally ``<root>/val/<class>/*`` and ``<root>/test/<class>/*``;
  a missing ``val`` is held out from ``train`` (``val_size``), a missing ``test`` is the validation split;
* class folders directly under ``<root>``: train / validation / test are drawn from them, seeded (``val_size``,
  ``test_size``).

Images of any colour mode are converted to ``in_chans`` (3: RGB, 1: grey); unreadable files are skipped with a
warning (or stop the run with ``strict=true``). Preprocessing: training RandomResizedCrop + flip, evaluation resize
+ centre crop (ImageNet style), or a plain resize for small images (``resize_only=true``).
"""

from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence

from torch.utils.data import Dataset, Subset
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from .base import IMAGENET_MEAN, IMAGENET_STD, ClassificationDataModule, check_not_empty, hold_out
from .images import ImageFiles

SPLITS = ("train", "val", "test")


def class_folder_samples(directory: str, classes: Optional[Sequence[str]] = None) -> tuple[list[str], list[str], list[int]]:
    """(class names, image paths, labels) of ``directory/<class>/…`` with torchvision's image extensions.

    ``classes`` fixes the names and their order (a validation folder must use the training folder's classes).
    """
    if classes is None:
        try:
            classes = find_classes(directory)[0]
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{directory} has no class folders: put the images of class <name> in "
                                    f"{directory}/<name>/") from error
    class_to_idx = {name: i for i, name in enumerate(classes)}
    unknown = sorted(e.name for e in os.scandir(directory) if e.is_dir() and e.name not in class_to_idx)
    if unknown:
        raise ValueError(f"{directory} has class folders the training split lacks: {', '.join(unknown[:5])}; "
                         "every split must use the training split's classes")
    present = [name for name in classes if os.path.isdir(os.path.join(directory, name))]
    samples = make_dataset(directory, {name: class_to_idx[name] for name in present}, extensions=IMG_EXTENSIONS,
                           allow_empty=True)
    return list(classes), [path for path, _ in samples], [label for _, label in samples]


class FolderDataModule(ClassificationDataModule):
    """Images in class folders; the classes (and ``num_classes``) come from the training folder."""

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(
        self,
        root: str = "data/images",
        num_classes: Optional[int] = None,
        in_chans: int = 3,
        image_size: int = 224,
        resize_size: int = 256,
        resize_only: bool = False,
        hflip: bool = True,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        val_size: float = 0.1,
        test_size: float = 0.1,
        seed: int = 0,
        strict: bool = False,
        batch_size: int = 64,
        num_workers: int = 2,
        pin_memory: bool = False,
    ):
        super().__init__(num_classes, in_chans, batch_size, num_workers, pin_memory)
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 (grey) or 3 (RGB), got {in_chans}")
        if mean is not None or std is not None:
            if mean is None or std is None or len(mean) != in_chans or len(std) != in_chans:
                raise ValueError(f"give both data.mean and data.std with {in_chans} value(s) each")
            self.mean, self.std = tuple(mean), tuple(std)
        elif in_chans == 1:
            self.mean, self.std = (0.5,), (0.25,)
        for name, value in (("val_size", val_size), ("test_size", test_size)):
            if value < 0:
                raise ValueError(f"{name} must be ≥ 0 (a fraction below 1 or an image count), got {value}")
        self.root, self.image_size, self.resize_size, self.resize_only = str(root), image_size, resize_size, resize_only
        self.hflip, self.val_size, self.test_size, self.seed, self.strict = hflip, val_size, test_size, seed, strict

    def _split_folder(self, split: str) -> Optional[str]:
        folder = os.path.join(self.root, split)
        return folder if os.path.isdir(folder) else None

    def _check_root(self) -> None:
        if not os.path.isdir(self.root):
            raise FileNotFoundError(
                f"data.root={self.root} does not exist. Point data.root at a folder of class folders "
                "(<root>/<class>/*.jpg) or of split folders (<root>/train/<class>/*.jpg, optionally val/ and test/)"
            )

    def _training_folder(self) -> str:
        self._check_root()
        return self._split_folder("train") or self.root

    def discover_classes(self) -> list[str]:
        classes, _, _ = class_folder_samples(self._training_folder())
        self.set_discovered_classes(classes)
        return self.classes

    def _transform(self, train: bool) -> transforms.Compose:
        if self.resize_only:
            steps = [transforms.Resize((self.image_size, self.image_size))]
        elif train:
            steps = [transforms.RandomResizedCrop(self.image_size)]
        else:
            steps = [transforms.Resize(self.resize_size), transforms.CenterCrop(self.image_size)]
        if train and self.hflip:
            steps.append(transforms.RandomHorizontalFlip())
        return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])

    def _files(self, paths: list[str], labels: list[int], train: bool) -> ImageFiles:
        mode = "RGB" if self.in_chans == 3 else "L"
        return ImageFiles(paths, labels, self._transform(train), mode=mode, strict=self.strict)

    def _count(self, size: float, total: int) -> int:
        return int(round(size * total)) if size < 1 else int(size)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        train_folder = self._training_folder()
        classes, paths, labels = class_folder_samples(train_folder)
        self.set_discovered_classes(classes)
        empty = [name for i, name in enumerate(classes) if i not in set(labels)]
        if empty:
            raise ValueError(f"class folder(s) without images in {train_folder}: {', '.join(empty[:5])}; add images "
                             f"or remove the folder (image extensions: {', '.join(IMG_EXTENSIONS)})")
        split_folders = {split: self._split_folder(split) for split in ("val", "test")} if train_folder != self.root \
            else {"val": None, "test": None}
        train: Dataset = self._files(paths, labels, train=True)
        test: Optional[Dataset] = None
        if split_folders["test"]:
            test = self._files(*class_folder_samples(split_folders["test"], classes)[1:], train=False)
        elif train_folder == self.root and self.test_size:  # one pool of class folders: draw the test images from it
            train, test = self._draw(train, paths, labels, self._count(self.test_size, len(paths)), "test_size", self.seed + 1)
        if split_folders["val"]:
            val: Dataset = self._files(*class_folder_samples(split_folders["val"], classes)[1:], train=False)
        elif self.val_size:
            indices = train.indices if isinstance(train, Subset) else list(range(len(paths)))
            kept_paths, kept_labels = [paths[i] for i in indices], [labels[i] for i in indices]
            train, val = self._draw(self._files(kept_paths, kept_labels, True), kept_paths, kept_labels,
                                    self._count(self.val_size, len(indices)), "val_size", self.seed)
        elif test is not None:
            val = test
        else:
            raise ValueError(f"{self.root} gives no validation images: add a val/ folder or set data.val_size > 0")
        self.train_set, self.val_set, self.test_set = train, val, test if test is not None else val
        if test is None:
            warnings.warn(f"{self.root} has no test split (no test/ folder, test_size=0): the validation split is "
                          "also the test split", stacklevel=2)
        for name in SPLITS:
            check_not_empty(name, getattr(self, f"{name}_set"), self.root)

    def _draw(self, train: Dataset, paths: list[str], labels: list[int], count: int, option: str,
              seed: int) -> tuple[Subset, Subset]:
        """Hold out ``count`` images of ``train`` (seeded) as an evaluation split with the evaluation transform."""
        if not 0 < count < len(paths):
            raise ValueError(f"data.{option} gives {count} of {len(paths)} images; it must leave images on both sides")
        return hold_out(train, self._files(paths, labels, train=False), count, seed)
