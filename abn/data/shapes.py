"""The embedded default data set: procedurally drawn shapes among distractors, with ground-truth boxes.

Every image is drawn from its own random generator seeded by (seed, split, index), so a split is the same on
every machine, in any worker order, and nothing has to be downloaded or stored. One image holds:

* a background of a random colour with pixel noise,
* 2–4 distractors (line segments and small dots) in random colours,
* one *class-defining* shape (circle, square, triangle, …) of random size, position and colour, drawn last.

Colours of background, distractors and object come from the same distribution for every class, and the shape's
size varies, so global colour statistics say (almost) nothing about the class: only the shape does.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import ClassificationDataModule, check_supervised_fraction, random_hflip_with_box

SHAPE_NAMES = ("circle", "square", "triangle", "diamond", "plus", "ring", "cross", "frame", "hourglass", "bar")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
DEFAULT_CLASSES = 8  # the first 8 shapes; 2 to len(SHAPE_NAMES) can be chosen


def shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape on normalised coordinates u (right) and v (down), both in [-1, 1]."""
    au, av = np.abs(u), np.abs(v)
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "square":
        return (au <= 0.9) & (av <= 0.9)
    if name == "triangle":
        return au <= (v + 1.0) / 2.0
    if name == "diamond":
        return au + av <= 1.0
    if name == "plus":
        return (au <= 0.3) | (av <= 0.3)
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.36)
    if name == "cross":
        return np.abs(au - av) <= 0.35
    if name == "frame":
        return np.maximum(au, av) >= 0.55
    if name == "hourglass":
        return au <= av
    if name == "bar":
        return (av <= 0.35) | (au >= 0.7)
    raise ValueError(f"unknown shape {name!r}; valid: {', '.join(SHAPE_NAMES)}")


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    while True:
        colour = rng.random(3)
        if np.abs(colour - background).sum() > 0.75:
            return colour


def draw_cluttered_background(
    rng: np.random.Generator, image_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A background of a random colour with pixel noise and 2–4 distractors (line segments, small dots) in
    contrasting colours. Returns the S×S×3 float image (not yet clipped to [0, 1]), the background colour, and the
    pixel-centre coordinates ``xs`` (column + 0.5) and ``ys`` (row + 0.5), both S×S."""
    s = image_size
    background = rng.random(3)
    image = np.broadcast_to(background, (s, s, 3)) + rng.normal(0.0, 0.04, (s, s, 3))
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5

    for _ in range(rng.integers(2, 5)):
        colour = _contrasting_colour(rng, background)
        if rng.random() < 0.6:  # a line segment, about one pixel wide
            x0, y0 = rng.uniform(0, s, 2)
            angle, length = rng.uniform(0, np.pi), rng.uniform(0.2, 0.45) * s
            dx, dy = np.cos(angle), np.sin(angle)
            t = np.clip((xs - x0) * dx + (ys - y0) * dy, 0.0, length)
            mask = np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy)) <= 0.6
        else:  # a small dot
            cx, cy = rng.uniform(0, s, 2)
            mask = np.hypot(xs - cx, ys - cy) <= rng.uniform(0.8, 1.6)
        image[mask] = colour
    return image, background, xs, ys


def draw_sample(
    rng: np.random.Generator, label: int, image_size: int = 32, min_size: float = 0.3, max_size: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """One H×W×3 float image in [0, 1] with shape ``label``, and its box (x0, y0, x1, y1), x1/y1 exclusive."""
    s = image_size
    image, background, xs, ys = draw_cluttered_background(rng, s)
    size = int(round(rng.uniform(min_size, max_size) * s))
    x0, y0 = rng.integers(0, s - size + 1, 2)
    u = (xs - x0) / size * 2.0 - 1.0
    v = (ys - y0) / size * 2.0 - 1.0
    inside = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    image[inside & shape_mask(SHAPE_NAMES[label], u, v)] = _contrasting_colour(rng, background)
    box = np.array([x0, y0, x0 + size, y0 + size], dtype=np.float32)
    return np.clip(image, 0.0, 1.0), box


def draw_split(
    num_samples: int, split: str, seed: int, image_size: int, box_shape: tuple[int, ...],
    draw: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]],
) -> tuple[Tensor, Tensor]:
    """Images (N×3×S×S uint8) and boxes (N×``box_shape``) of a split of an embedded data set: ``draw(rng, i)`` gives
    the float image in [0, 1] and the boxes of sample ``i`` from its own generator, seeded by (seed, split, i)."""
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLIT_CODES)}")
    images = np.empty((num_samples, image_size, image_size, 3), dtype=np.uint8)
    boxes = np.empty((num_samples, *box_shape), dtype=np.float32)
    for i in range(num_samples):
        rng = np.random.default_rng((seed, SPLIT_CODES[split], i))
        image, boxes[i] = draw(rng, i)
        images[i] = np.round(image * 255.0)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(boxes)


def generate_split(
    num_samples: int, num_classes: int, split: str, seed: int = 0, image_size: int = 32
) -> tuple[Tensor, Tensor, Tensor]:
    """Images (N×3×S×S uint8), labels (N) and boxes (N×4) of a split; balanced labels, deterministic."""
    if not 2 <= num_classes <= len(SHAPE_NAMES):
        raise ValueError(f"the shapes data set has 2 to {len(SHAPE_NAMES)} classes, got num_classes={num_classes}")
    labels = np.arange(num_samples) % num_classes
    images, boxes = draw_split(num_samples, split, seed, image_size, (4,),
                               lambda rng, i: draw_sample(rng, int(labels[i]), image_size))
    return images, torch.from_numpy(labels), boxes


class DrawnImages(Dataset):
    """(image, target, boxes) triples of an embedded data set, from its uint8 images held in memory; ``transform``
    takes and returns (float image in [0, 1], boxes)."""

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        boxes: Tensor,
        classes: Sequence[str],
        transform: Optional[Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = None,
    ):
        self.images, self.targets, self.boxes = images, targets, boxes
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        image, boxes = self.images[index].float().div_(255.0), self.boxes[index].clone()
        if self.transform is not None:
            image, boxes = self.transform(image, boxes)
        return image, self.targets[index], boxes


class ShapesDataset(DrawnImages):
    """(image, label, box) triples; ``transform`` takes and returns (float image in [0, 1], box)."""

    def __init__(
        self,
        num_samples: int,
        num_classes: int = DEFAULT_CLASSES,
        split: str = "train",
        seed: int = 0,
        image_size: int = 32,
        transform: Optional[Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = None,
    ):
        images, labels, boxes = generate_split(num_samples, num_classes, split, seed, image_size)
        super().__init__(images, labels, boxes, SHAPE_NAMES[:num_classes], transform)

    @property
    def labels(self) -> Tensor:
        """The class index of each image (the targets)."""
        return self.targets


class DrawnDataModule(ClassificationDataModule):
    """What the embedded data modules share: train/val/test drawn from ``seed`` in ``setup`` (``_make``), normalised,
    and the training images mirrored with probability 1/2 together with their boxes (``hflip``)."""

    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        image_size: int,
        train_size: int,
        val_size: int,
        test_size: int,
        seed: int,
        hflip: bool,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
    ):
        super().__init__(num_classes, in_chans, batch_size, num_workers, pin_memory)
        self.image_size, self.seed, self.hflip = image_size, seed, hflip
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        for split, size in self.sizes.items():
            if size < 1:
                raise ValueError(f"{split}_size must be at least 1, got {size}")
        self.classes = list(SHAPE_NAMES[:num_classes])

    def _train_transform(self, image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        if self.hflip:
            image, boxes = random_hflip_with_box(image, boxes)  # NaN rows (absent attributes) stay NaN
        return self.normalize(image), boxes

    def _eval_transform(self, image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        return self.normalize(image), boxes

    def _transform(self, split: str) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
        return self._train_transform if split == "train" and self.augment else self._eval_transform

    def _make(self, split: str) -> DrawnImages:
        """The data set of ``split`` (``train``, ``val`` or ``test``) with ``self._transform(split)``."""
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._make("train")
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._make("val")
        if stage in (None, "test") and self.test_set is None:
            self.test_set = self._make("test")


class ShapesDataModule(DrawnDataModule):
    """The embedded default data set (no download): ``num_classes`` shapes, train/val/test drawn from ``seed``.

    Batches are (images, labels, boxes): the object's box is the ground truth for attention supervision, kept for
    a seeded ``supervised_fraction`` of the training images (NaN boxes for the others)."""

    supervision = "boxes"

    def __init__(
        self,
        num_classes: int = DEFAULT_CLASSES,
        in_chans: int = 3,
        image_size: int = 32,
        train_size: int = 8000,
        val_size: int = 1000,
        test_size: int = 2000,
        seed: int = 0,
        hflip: bool = True,
        supervised_fraction: float = 1.0,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
    ):
        if in_chans != 3:
            raise ValueError(f"the shapes data set has 3 channels (colour carries no class information); got in_chans={in_chans}")
        if not 2 <= num_classes <= len(SHAPE_NAMES):
            raise ValueError(f"the shapes data set has 2 to {len(SHAPE_NAMES)} classes, got num_classes={num_classes}")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
        super().__init__(num_classes, in_chans, image_size, train_size, val_size, test_size, seed, hflip, batch_size,
                         num_workers, pin_memory)
        self.supervised_fraction = check_supervised_fraction(supervised_fraction)

    def _make(self, split: str) -> ShapesDataset:
        return ShapesDataset(self.sizes[split], self.num_classes, split, self.seed, self.image_size,
                             self._transform(split))
