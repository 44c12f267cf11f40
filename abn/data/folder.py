"""Any folder of images sorted into class folders (``data=folder data.root=…``), so ABN trains on a user's own images.

Two layouts are accepted:

* split folders: ``<root>/train/<class>/*``, and optionally ``<root>/val/<class>/*`` and ``<root>/test/<class>/*``;
  a missing ``val`` is held out from ``train`` (``val_size``), a missing ``test`` is the validation split;
* class folders directly under ``<root>``: train / validation / test are drawn from them, seeded (``val_size``,
  ``test_size``).

Images of any colour mode are converted to ``in_chans`` (3: RGB, 1: grey); unreadable files are skipped with a
warning (or stop the run with ``strict=true``). Preprocessing: training RandomResizedCrop + flip, evaluation resize
+ centre crop (ImageNet style), or a plain resize for small images (``resize_only=true``).

With ``mask_dir``, training batches are (images, labels, masks) for attention supervision: the mask of
``<root>/<path>`` is the greyscale ``<mask_dir>/<path with .png>`` (0–255 → 0–1), cropped, resized and mirrored
with its image. A training image without a mask trains unsupervised (its mask is NaN); validation and test
batches are (images, labels).
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision import transforms, tv_tensors
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import v2

from .base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassificationDataModule,
    check_not_empty,
    check_supervised_fraction,
    hold_out,
)
from .images import ImageFiles, image_file_sets

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


class UnreadableMaskError(RuntimeError):
    """A mask file that PIL cannot decode."""


# what PIL raises for a file that is not an image, or not a whole one
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_mask(path: str, size: tuple[int, int]) -> Tensor:
    """The 1×H×W float mask in [0, 1] of a greyscale file (any mode converted to 8-bit grey, 0–255 → 0–1),
    resized (nearest neighbour: the file's values are kept) to its image's ``size`` (width, height) where it
    differs."""
    try:
        with Image.open(path) as opened:
            opened.load()
            mask = opened
            if mask.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: keep the top 8 bits, as images do
                mask = mask.point(lambda value: value * (1 / 256))
            mask = mask.convert("L")
    except _READ_ERRORS as error:
        raise UnreadableMaskError(f"cannot read mask {path}: {error}; replace it, or delete it to train its image "
                                  "without attention supervision") from error
    if mask.size != size:
        mask = mask.resize(size, Image.NEAREST)
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0).unsqueeze(0)


class ImageAndMaskTransform:
    """The training transform of an image (PIL) with its mask: torchvision v2's ``geometric`` steps move both alike
    (the mask as a ``tv_tensors.Mask``, resampled with nearest neighbour), then the image alone becomes a
    normalised float tensor. A missing mask (None) comes back as a NaN mask of the output size."""

    def __init__(self, geometric: Sequence[Callable], mean: Sequence[float], std: Sequence[float]):
        self.geometric = v2.Compose(list(geometric))
        self.to_input = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def __call__(self, image: Image.Image, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        if mask is None:
            tensor = self.to_input(self.geometric(image)).as_subclass(Tensor)
            return tensor, torch.full((1, *tensor.shape[-2:]), float("nan"))
        image, mask = self.geometric(image, tv_tensors.Mask(mask))
        return self.to_input(image).as_subclass(Tensor), mask.as_subclass(Tensor)


class MaskedImageFiles(ImageFiles):
    """``(image, label, mask)`` triples: image files read as ``ImageFiles`` reads them (unreadable ones give
    ``None``), each with the mask file in ``mask_paths`` (None: no mask), both through ``transform``
    (an :class:`ImageAndMaskTransform`)."""

    def __init__(self, paths: Sequence[str], targets: Sequence[Any], mask_paths: Sequence[Optional[str]],
                 transform: ImageAndMaskTransform, mode: str = "RGB", strict: bool = False):
        super().__init__(paths, targets, None, mode, strict)
        if len(mask_paths) != len(self.paths):
            raise ValueError("paths and mask_paths must have the same length")
        self.mask_paths, self.joint_transform = list(mask_paths), transform

    def __getitem__(self, index: int) -> Optional[tuple[Tensor, Any, Tensor]]:
        sample = super().__getitem__(index)
        if sample is None:
            return None
        image, target = sample
        mask_path = self.mask_paths[index]
        mask = load_mask(mask_path, image.size) if mask_path is not None else None
        image, mask = self.joint_transform(image, mask)
        return image, target, mask


class FolderDataModule(ClassificationDataModule):
    """Images in class folders; the classes (and ``num_classes``) come from the training folder.

    ``mask_dir`` (optional) holds a mask per training image for attention supervision (``supervision="masks"``),
    kept for a seeded ``supervised_fraction`` of the training images.
    """

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
        mask_dir: Optional[str] = None,
        supervised_fraction: float = 1.0,
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
        self.supervised_fraction = check_supervised_fraction(supervised_fraction)
        if mask_dir is None and self.supervised_fraction < 1:
            raise ValueError(f"data.supervised_fraction={supervised_fraction} keeps a share of the training masks, but "
                             "there are none: set data.mask_dir to the folder of masks, or supervised_fraction=1.0")
        self.mask_dir = None if mask_dir is None else str(mask_dir)
        self.supervision = "masks" if mask_dir is not None else None

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

    def _geometric(self, train: bool, library: ModuleType = transforms) -> list[Callable]:
        """The resize/crop/flip steps from ``library``: ``torchvision.transforms`` or its ``v2`` (which also moves
        masks)."""
        if self.resize_only:
            steps = [library.Resize((self.image_size, self.image_size))]
        elif train and self.augment:
            steps = [library.RandomResizedCrop(self.image_size)]
        else:
            steps = [library.Resize(self.resize_size), library.CenterCrop(self.image_size)]
        if train and self.augment and self.hflip:
            steps.append(library.RandomHorizontalFlip())
        return steps

    def _transform(self, train: bool) -> transforms.Compose:
        return transforms.Compose(self._geometric(train) + [transforms.ToTensor(),
                                                            transforms.Normalize(self.mean, self.std)])

    def _files(self, paths: list[str], labels: list[int], train: bool) -> ImageFiles:
        mode = "RGB" if self.in_chans == 3 else "L"
        if train and self.mask_dir is not None:
            mask_paths = [self.mask_path(path) for path in paths]
            found = [path if os.path.isfile(path) else None for path in mask_paths]
            transform = ImageAndMaskTransform(self._geometric(True, v2), self.mean, self.std)
            return MaskedImageFiles(paths, labels, found, transform, mode=mode, strict=self.strict)
        return ImageFiles(paths, labels, self._transform(train), mode=mode, strict=self.strict)

    def mask_path(self, image_path: str) -> str:
        """Where the mask of an image is expected: its path under ``root``, under ``mask_dir``, with ``.png``."""
        relative = os.path.splitext(os.path.relpath(image_path, self.root))[0]
        return os.path.join(str(self.mask_dir), relative + ".png")

    def _check_masks(self, train: Dataset) -> None:
        """Refuse a training split without any mask or with a mask file that is not an image (only its header is
        read here; a file that fails to decode later stops the run naming it); warn once about images without."""
        files = image_file_sets(train)[0]
        indices = sorted(train.indices) if isinstance(train, Subset) else list(range(len(files)))
        missing = [i for i in indices if files.mask_paths[i] is None]
        if missing:
            first = files.paths[missing[0]]
            where = f"{first} expects {self.mask_path(first)}: the image's path under data.root, with .png"
            if len(missing) == len(indices):
                raise ValueError(f"none of the {len(indices)} training images has a mask in data.mask_dir="
                                 f"{self.mask_dir} ({where}); put the masks there or set data.mask_dir=null")
            warnings.warn(f"{len(missing)} of {len(indices)} training images have no mask in {self.mask_dir} (first: "
                          f"{where}); they train without attention supervision", stacklevel=3)
        for i in indices:
            path = files.mask_paths[i]
            if path is None:
                continue
            try:
                with Image.open(path):
                    pass
            except _READ_ERRORS as error:
                raise UnreadableMaskError(f"cannot read mask {path}: {error}; replace it, or delete it to train "
                                          f"{files.paths[i]} without attention supervision") from error

    def _count(self, size: float, total: int) -> int:
        return int(round(size * total)) if size < 1 else int(size)

    def _check_mask_dir(self) -> None:
        if self.mask_dir is not None and not os.path.isdir(self.mask_dir):
            raise FileNotFoundError(f"data.mask_dir={self.mask_dir} does not exist. Point it at the folder of masks "
                                    "(<mask_dir>/<image path under data.root>.png), or set data.mask_dir=null")

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        train_folder = self._training_folder()
        self._check_mask_dir()
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
        if self.mask_dir is not None:
            self._check_masks(train)
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
