"""The embedded multi-attribute data set: several shapes of different kinds per image, one box per attribute.

Attribute ``t`` is "a shape of kind ``SHAPE_NAMES[t]`` is in the image", for the first ``num_attributes`` kinds: a
multilabel task with a ground-truth box for every present attribute, so the attention map of each attribute can be
scored without CelebA. One image holds:

* the noisy background and 2–4 distractors of the shapes data set (:func:`~abn.data.shapes.draw_cluttered_background`),
* 1 to ``max_objects`` shapes, each of another kind, in contrasting colours, at places at least ``GAP`` pixels apart.

Which kinds: every attribute is present with probability 1/2, independently, and the draw is repeated until 1 to
``max_objects`` are present. With the defaults (5 attributes, at most 3 objects) each attribute is present in 44 %
of the images, and two attributes are only weakly (negatively) correlated. Each image is drawn from its own random
generator seeded by (seed, split, index), so a split is the same on every machine and in any worker order.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
from torch import Tensor

from .shapes import (
    SHAPE_NAMES,
    DrawnDataModule,
    DrawnImages,
    _contrasting_colour,
    draw_cluttered_background,
    draw_split,
    shape_mask,
)

DEFAULT_ATTRIBUTES = 5
DEFAULT_MAX_OBJECTS = 3
PRESENCE = 0.5  # the chance of each attribute before the draw is limited to 1..max_objects objects
# An object's side as a share of the image side, for up to FULL_SIZE_OBJECTS objects; with more, the sides shrink by
# sqrt(FULL_SIZE_OBJECTS / max_objects), so the objects cover about the same area and still find room.
SIDE_SHARES = (0.25, 0.4)
FULL_SIZE_OBJECTS = 3
MIN_OBJECT_PIXELS = 10  # smaller objects would share a cell of a 12×12 attention map with their neighbours
GAP = 2  # pixels between the squares of two objects: neighbours never touch
CANDIDATES = 32  # positions tried at once for one object before the whole layout is drawn again


def object_sides(image_size: int, max_objects: int) -> tuple[int, int]:
    """The smallest and largest side in pixels of the square an object is drawn in."""
    scale = math.sqrt(FULL_SIZE_OBJECTS / max(FULL_SIZE_OBJECTS, max_objects))
    return tuple(int(round(share * scale * image_size)) for share in SIDE_SHARES)


def check_options(num_attributes: int, max_objects: int, image_size: int) -> None:
    """One ValueError per bad setting, naming it and what to set instead."""
    if not 2 <= num_attributes <= len(SHAPE_NAMES):
        raise ValueError(f"the multi-shapes data set has 2 to {len(SHAPE_NAMES)} attributes (one per shape kind), got "
                         f"num_attributes={num_attributes}")
    if not 1 <= max_objects <= num_attributes:
        raise ValueError(f"max_objects must be between 1 and num_attributes={num_attributes} (the objects of an image "
                         f"are of different kinds), got max_objects={max_objects}")
    smallest, largest = object_sides(image_size, max_objects)
    if smallest < MIN_OBJECT_PIXELS:
        needed = image_size
        while object_sides(needed, max_objects)[0] < MIN_OBJECT_PIXELS:
            needed += 1
        raise ValueError(f"image_size={image_size} is too small for the objects: with max_objects={max_objects} they "
                         f"would be {smallest} to {largest} px wide, and need at least {MIN_OBJECT_PIXELS}; set "
                         f"image_size to at least {needed} or lower max_objects")


def draw_attributes(rng: np.random.Generator, num_attributes: int, max_objects: int) -> np.ndarray:
    """The indices of the present attributes (ascending): each present with probability PRESENCE, redrawn until
    1 to ``max_objects`` are present."""
    while True:
        present = np.flatnonzero(rng.random(num_attributes) < PRESENCE)
        if 1 <= len(present) <= max_objects:
            return present


def draw_layout(rng: np.random.Generator, count: int, image_size: int, max_objects: int) -> np.ndarray:
    """``count`` squares (x0, y0, side) inside the image, pairwise at least GAP pixels apart.

    The largest square is placed first, each at the first free one of up to CANDIDATES random positions; when one
    finds no room, sides and positions are all drawn again (deterministic: everything comes from ``rng``)."""
    smallest, largest = object_sides(image_size, max_objects)
    while True:
        sides = [int(side) for side in rng.integers(smallest, largest + 1, count)]
        squares: list[Optional[tuple[int, int, int]]] = [None] * count
        for index in sorted(range(count), key=lambda i: -sides[i]):
            side = sides[index]
            for x, y in (rng.random((CANDIDATES, 2)) * (image_size - side + 1)).astype(np.int64).tolist():
                if all(x >= ox + oside + GAP or x + side + GAP <= ox or y >= oy + oside + GAP or y + side + GAP <= oy
                       for ox, oy, oside in filter(None, squares)):
                    squares[index] = (x, y, side)
                    break
            else:
                break  # no room for this one: draw the layout again
        else:
            return np.array(squares, dtype=np.int64)


def draw_multi_sample(
    rng: np.random.Generator, num_attributes: int = DEFAULT_ATTRIBUTES, max_objects: int = DEFAULT_MAX_OBJECTS,
    image_size: int = 48,
) -> tuple[np.ndarray, np.ndarray]:
    """One S×S×3 float image in [0, 1] and its T×4 boxes (x0, y0, x1, y1; x1/y1 exclusive; the tight box of the
    object's pixels), NaN rows for the absent attributes."""
    image, background, xs, ys = draw_cluttered_background(rng, image_size)
    kinds = draw_attributes(rng, num_attributes, max_objects)
    boxes = np.full((num_attributes, 4), np.nan, dtype=np.float32)
    for kind, (x0, y0, side) in zip(kinds, draw_layout(rng, len(kinds), image_size, max_objects)):
        window = (slice(y0, y0 + side), slice(x0, x0 + side))
        u = (xs[window] - x0) / side * 2.0 - 1.0
        v = (ys[window] - y0) / side * 2.0 - 1.0
        mask = shape_mask(SHAPE_NAMES[kind], u, v)
        image[window][mask] = _contrasting_colour(rng, background)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        boxes[kind] = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
    return np.clip(image, 0.0, 1.0), boxes


def generate_multishapes_split(
    num_samples: int, num_attributes: int, max_objects: int, split: str, seed: int = 0, image_size: int = 48
) -> tuple[Tensor, Tensor, Tensor]:
    """Images (N×3×S×S uint8), targets (N×T float 0/1) and boxes (N×T×4, NaN where absent) of a split."""
    check_options(num_attributes, max_objects, image_size)
    images, boxes = draw_split(num_samples, split, seed, image_size, (num_attributes, 4),
                               lambda rng, i: draw_multi_sample(rng, num_attributes, max_objects, image_size))
    return images, (~boxes[:, :, 0].isnan()).float(), boxes


class MultiShapesDataset(DrawnImages):
    """(image, target, boxes) triples; ``transform`` takes and returns (float image in [0, 1], T×4 boxes)."""

    def __init__(
        self,
        num_samples: int,
        num_attributes: int = DEFAULT_ATTRIBUTES,
        max_objects: int = DEFAULT_MAX_OBJECTS,
        split: str = "train",
        seed: int = 0,
        image_size: int = 48,
        transform: Optional[Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = None,
    ):
        images, targets, boxes = generate_multishapes_split(num_samples, num_attributes, max_objects, split, seed,
                                                            image_size)
        super().__init__(images, targets, boxes, SHAPE_NAMES[:num_attributes], transform)


class MultiShapesDataModule(DrawnDataModule):
    """The embedded multi-attribute data set (no download): ``num_attributes`` shape kinds, each an attribute;
    train/val/test drawn from ``seed``. ``num_classes`` is set from ``num_attributes`` (null in the config)."""

    task = "multilabel"
    title = "the multi-shapes data set"

    def __init__(
        self,
        num_classes: Optional[int] = None,
        num_attributes: int = DEFAULT_ATTRIBUTES,
        max_objects: int = DEFAULT_MAX_OBJECTS,
        in_chans: int = 3,
        image_size: int = 48,
        train_size: int = 6000,
        val_size: int = 1000,
        test_size: int = 2000,
        seed: int = 0,
        hflip: bool = True,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
    ):
        if in_chans != 3:
            raise ValueError(f"the multi-shapes data set has 3 channels; got in_chans={in_chans}")
        check_options(num_attributes, max_objects, image_size)
        if num_classes is not None and num_classes != num_attributes:
            raise ValueError(f"the multi-shapes data set has one output per attribute: num_attributes={num_attributes} "
                             f"but data.num_classes={num_classes}; set data.num_classes=null (the data module sets it) "
                             f"or change data.num_attributes")
        super().__init__(num_attributes, in_chans, image_size, train_size, val_size, test_size, seed, hflip,
                         batch_size, num_workers, pin_memory)
        self.max_objects = max_objects

    def _make(self, split: str) -> MultiShapesDataset:
        return MultiShapesDataset(self.sizes[split], self.num_classes, self.max_objects, split, self.seed,
                                  self.image_size, self._transform(split))

    def train_label_frequencies(self) -> Tensor:
        """The share of training images in which each attribute is present (T values, for the frequency weights of
        ``ABNModule(attribute_weights="frequency")``)."""
        self.setup("fit")
        return self.train_set.targets.mean(dim=0)
