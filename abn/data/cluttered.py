"""Cluttered Fashion-MNIST: real garments on a larger black canvas among clutter, with ground-truth boxes.

Each sample is a ``canvas_size``² grey canvas (black background) holding

* ``clutter`` patches: square crops (``min_clutter_size``–``max_clutter_size`` px, taken around a bright pixel so
  they are not empty margins) of *other* garments of any class, pasted anywhere on the canvas, then
* the sample's garment, resized to a side drawn in [``min_scale``, ``max_scale``] and pasted fully inside the
  canvas on top, combined with a pixel-wise maximum so the clutter never erases it.

The box is the tight bounding box (x0, y0, x1, y1; x1/y1 exclusive) of the resized garment's non-zero pixels in
canvas coordinates: Fashion-MNIST garments have black margins, so it is usually smaller than the pasted square.

Every sample is drawn from its own generator ``numpy.random.default_rng([seed, split, index])``, so a split is the
same on every run, in any worker count or order, and nothing but the original Fashion-MNIST files is stored.
Clutter is cut from the images of the sample's own split: the held-out validation garments and the test garments
never appear in a training image, not even as clutter.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import datasets

from .base import ClassificationDataModule, check_not_empty, check_supervised_fraction, random_hflip_with_box
from .fashion_mnist import FASHION_MNIST_CLASSES, SYSTEM_COPIES, prepare_files

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# Seeds of the two orderings that are not per-sample: the train/validation hold-out, and the test garments' order.
_HOLD_OUT_CODE, _TEST_ORDER_CODE = 10, 11
GARMENT_SIDE = 28  # Fashion-MNIST images are 28×28

BoxTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _crop_with_content(rng: np.random.Generator, piece: np.ndarray, side: int) -> np.ndarray:
    """A ``side``² crop of ``piece`` centred (as far as the border allows) on one of its bright pixels."""
    bright = np.flatnonzero(piece >= max(int(piece.max()) // 2, 1))
    if bright.size:
        centre_y, centre_x = divmod(int(bright[rng.integers(bright.size)]), piece.shape[1])
        top = min(max(centre_y - side // 2, 0), piece.shape[0] - side)
        left = min(max(centre_x - side // 2, 0), piece.shape[1] - side)
    else:  # an all-black image: any crop is as good as another
        top, left = rng.integers(0, piece.shape[0] - side + 1, 2)
    return piece[top : top + side, left : left + side]


def draw_cluttered(
    rng: np.random.Generator,
    garment: np.ndarray,
    clutter_pieces: Sequence[np.ndarray],
    canvas_size: int = 64,
    min_scale: int = 20,
    max_scale: int = 36,
    min_clutter_size: int = 6,
    max_clutter_size: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """One ``canvas_size``² uint8 canvas and the garment's box (x0, y0, x1, y1), int64, x1/y1 exclusive.

    ``garment`` and each of ``clutter_pieces`` are 28×28 uint8 images; one patch is cut from every piece.
    """
    canvas = np.zeros((canvas_size, canvas_size), dtype=np.uint8)
    for piece in clutter_pieces:
        side = int(rng.integers(min_clutter_size, max_clutter_size + 1))
        patch = _crop_with_content(rng, piece, side)
        top, left = rng.integers(0, canvas_size - side + 1, 2)
        region = canvas[top : top + side, left : left + side]
        np.maximum(region, patch, out=region)

    scale = int(rng.integers(min_scale, max_scale + 1))
    # PIL resizes uint8 images in fixed-point arithmetic: the same pixels on every machine
    resized = np.asarray(Image.fromarray(garment).resize((scale, scale), Image.BILINEAR))
    top, left = (int(v) for v in rng.integers(0, canvas_size - scale + 1, 2))
    region = canvas[top : top + scale, left : left + scale]
    np.maximum(region, resized, out=region)

    rows, cols = np.flatnonzero(resized.any(axis=1)), np.flatnonzero(resized.any(axis=0))
    if rows.size:
        box = (left + cols[0], top + rows[0], left + cols[-1] + 1, top + rows[-1] + 1)
    else:  # an all-black garment: the pasted square is the best box there is
        box = (left, top, left + scale, top + scale)
    return canvas, np.array(box, dtype=np.int64)


class ClutteredFashionMNIST(Dataset):
    """``(image, label, box)`` triples drawn on the fly from the garments ``images[pool]``.

    Sample ``i`` shows garment ``pool[i]`` with clutter cut from other garments of ``pool``; ``num_samples`` (None:
    the whole pool) caps the count. The image is a float 1×S×S tensor in [0, 1] before ``transform``, which takes
    and returns (image, box); the box is an int64 tensor (x0, y0, x1, y1), x1/y1 exclusive.
    """

    def __init__(
        self,
        images: Tensor | np.ndarray,
        labels: Tensor | Sequence[int],
        pool: Sequence[int],
        split: str,
        seed: int = 0,
        num_samples: Optional[int] = None,
        canvas_size: int = 64,
        min_scale: int = 20,
        max_scale: int = 36,
        clutter: int = 4,
        min_clutter_size: int = 6,
        max_clutter_size: int = 10,
        transform: Optional[BoxTransform] = None,
    ):
        if split not in SPLIT_CODES:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLIT_CODES)}")
        self.images = images.numpy() if isinstance(images, Tensor) else np.asarray(images)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.pool = np.asarray(pool, dtype=np.int64)
        self.split, self.seed = split, seed
        self.num_samples = len(self.pool) if num_samples is None else min(num_samples, len(self.pool))
        self.canvas_size, self.min_scale, self.max_scale = canvas_size, min_scale, max_scale
        self.clutter, self.min_clutter_size, self.max_clutter_size = clutter, min_clutter_size, max_clutter_size
        self.transform = transform

    def __len__(self) -> int:
        return self.num_samples

    def draw(self, index: int) -> tuple[np.ndarray, int, np.ndarray]:
        """Sample ``index`` before any transform: uint8 canvas (S×S), label, box."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} of a split of {self.num_samples}")
        rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])
        # clutter comes from other garments of the pool: draw among the positions other than this sample's own
        if len(self.pool) > 1:
            positions = rng.integers(0, len(self.pool) - 1, self.clutter)
            positions += positions >= index
        else:  # a pool of one garment: it is its own clutter
            positions = np.zeros(self.clutter, dtype=np.int64)
        garment_index = int(self.pool[index])
        canvas, box = draw_cluttered(
            rng, self.images[garment_index], [self.images[self.pool[p]] for p in positions], self.canvas_size,
            self.min_scale, self.max_scale, self.min_clutter_size, self.max_clutter_size,
        )
        return canvas, int(self.labels[garment_index]), box

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        canvas, label, box = self.draw(index)
        image, box_tensor = torch.from_numpy(canvas).float().div_(255.0).unsqueeze(0), torch.from_numpy(box)
        if self.transform is not None:
            image, box_tensor = self.transform(image, box_tensor)
        return image, torch.tensor(label, dtype=torch.int64), box_tensor


class ClutteredFashionMNISTDataModule(ClassificationDataModule):
    """Fashion-MNIST garments on a ``canvas_size``² canvas among clutter; batches are (images, labels, boxes).

    Training garments are Fashion-MNIST's 60k training images minus a seeded hold-out of ``val_size`` for
    validation (``val_size=0``: validate on the test split); test garments are the 10k test images.
    ``train_size``/``test_size`` (None: all) cap the sample count with a seeded choice of garments. Defaults:
    garments resized to 20–36 px on a 64 px canvas with 4 clutter patches of 6–10 px. The garment's box is the
    ground truth for attention supervision, kept for a seeded ``supervised_fraction`` of the training images (NaN
    boxes for the others).
    """

    # Measured on the defaults (canvas 64, scale 20–36, clutter 4 of 6–10 px, seed 0): every pixel of the first
    # 5000 training samples drawn from the real Fashion-MNIST files, mean and (population) standard deviation.
    mean = (0.0861,)
    std = (0.2314,)
    title = "cluttered Fashion-MNIST"
    fixed_num_classes = FASHION_MNIST_CLASSES
    supervision = "boxes"

    def __init__(
        self,
        root: str = "data",
        num_classes: int = FASHION_MNIST_CLASSES,
        in_chans: int = 1,
        canvas_size: int = 64,
        min_scale: int = 20,
        max_scale: int = 36,
        clutter: int = 4,
        min_clutter_size: int = 6,
        max_clutter_size: int = 10,
        train_size: Optional[int] = None,
        val_size: int = 5000,
        test_size: Optional[int] = None,
        seed: int = 0,
        hflip: bool = True,
        supervised_fraction: float = 1.0,
        download: bool = True,
        search_dirs: Sequence[str] = SYSTEM_COPIES,
        batch_size: int = 128,
        num_workers: int = 2,
        pin_memory: bool = False,
    ):
        super().__init__(num_classes, in_chans, batch_size, num_workers, pin_memory)
        if in_chans not in (1, 3):
            raise ValueError(f"cluttered Fashion-MNIST is grey: in_chans must be 1 (or 3 to repeat it), got {in_chans}")
        if min_scale < 1:
            raise ValueError(f"min_scale must be at least 1 pixel, got {min_scale}")
        if min_scale > max_scale:
            raise ValueError(f"min_scale={min_scale} is larger than max_scale={max_scale}; set min_scale ≤ max_scale")
        if canvas_size < max_scale:
            raise ValueError(f"canvas_size={canvas_size} is smaller than max_scale={max_scale}: the garment would not "
                             f"fit; set canvas_size ≥ {max_scale} or lower max_scale")
        if clutter < 0:
            raise ValueError(f"clutter must be ≥ 0 (the number of clutter patches), got {clutter}")
        if not 1 <= min_clutter_size <= max_clutter_size <= min(GARMENT_SIDE, canvas_size):
            raise ValueError(f"clutter patch sizes must satisfy 1 ≤ min_clutter_size ≤ max_clutter_size ≤ "
                             f"{min(GARMENT_SIDE, canvas_size)} (patches are cut from 28×28 garments), got "
                             f"min_clutter_size={min_clutter_size}, max_clutter_size={max_clutter_size}")
        for name, size in (("train_size", train_size), ("test_size", test_size)):
            if size is not None and size < 1:
                raise ValueError(f"{name} must be at least 1, or null for all images; got {size}")
        if val_size < 0:
            raise ValueError(f"val_size must be ≥ 0 (0 validates on the test split), got {val_size}")
        if seed < 0:
            raise ValueError(f"seed must be ≥ 0 (it seeds numpy's per-sample generators), got {seed}")
        self.supervised_fraction = check_supervised_fraction(supervised_fraction)
        self.root, self.seed, self.hflip = str(root), seed, hflip
        self.download, self.search_dirs = download, tuple(search_dirs)
        self.canvas_size, self.min_scale, self.max_scale = canvas_size, min_scale, max_scale
        self.clutter, self.min_clutter_size, self.max_clutter_size = clutter, min_clutter_size, max_clutter_size
        self.train_size, self.val_size, self.test_size = train_size, val_size, test_size
        if in_chans == 3:
            self.mean, self.std = self.mean * 3, self.std * 3
        self.classes = list(datasets.FashionMNIST.classes)

    @property
    def input_size(self) -> int:
        return self.canvas_size

    def prepare_data(self) -> None:
        prepare_files(self.root, self.search_dirs, self.download)

    def _finish(self, image: Tensor) -> Tensor:
        image = (image - self.mean[0]) / self.std[0]
        return image.expand(3, -1, -1) if self.in_chans == 3 else image

    def _train_transform(self, image: Tensor, box: Tensor) -> tuple[Tensor, Tensor]:
        """Normalise, and mirror half of the images with their boxes."""
        if self.hflip:
            image, box = random_hflip_with_box(image, box)
        return self._finish(image), box

    def _eval_transform(self, image: Tensor, box: Tensor) -> tuple[Tensor, Tensor]:
        return self._finish(image), box

    def _split(self, images: Tensor, labels: Tensor, pool: np.ndarray, split: str,
               num_samples: Optional[int]) -> ClutteredFashionMNIST:
        transform = self._train_transform if split == "train" and self.augment else self._eval_transform
        return ClutteredFashionMNIST(
            images, labels, pool, split, self.seed, num_samples, self.canvas_size, self.min_scale, self.max_scale,
            self.clutter, self.min_clutter_size, self.max_clutter_size, transform,
        )

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None or self.test_set is not None:
            return
        self.prepare_data()  # cheap when the files are there; gives the clear message when they are not
        train_raw = datasets.FashionMNIST(self.root, train=True)
        test_raw = datasets.FashionMNIST(self.root, train=False)
        if self.val_size >= len(train_raw):
            raise ValueError(f"val_size={self.val_size} leaves no training images (the training split has "
                             f"{len(train_raw)}); lower data.val_size")
        order = np.random.default_rng([self.seed, _HOLD_OUT_CODE]).permutation(len(train_raw))
        train_images, train_labels = train_raw.data, train_raw.targets
        self.train_set = self._split(train_images, train_labels, order[self.val_size :], "train", self.train_size)
        test_order = np.random.default_rng([self.seed, _TEST_ORDER_CODE]).permutation(len(test_raw))
        self.test_set = self._split(test_raw.data, test_raw.targets, test_order, "test", self.test_size)
        if self.val_size > 0:
            self.val_set = self._split(train_images, train_labels, order[: self.val_size], "val", None)
        else:
            self.val_set = self.test_set
        for name in ("train", "val", "test"):
            check_not_empty(name, getattr(self, f"{name}_set"), f"Fashion-MNIST in {self.root}")
