"""Image files on disk, read robustly: every colour mode converted, unreadable files skipped and counted.

``ImageFiles`` is the one dataset behind the folder-based data modules (ImageNet, any ImageFolder, CompCars,
CelebA). A file PIL cannot decode (corrupt, truncated, not an image) is, by default, skipped: a warning names it,
``skip_unreadable_collate`` drops it from its batch, and the data module reports the final count at the end of
``fit``/``test``. With ``strict=True`` the first such file stops the run with an error naming it.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Sequence

import torch
from PIL import Image, ImageFile
from torch.utils.data import ConcatDataset, Dataset, Subset, default_collate

# A truncated JPEG must fail to load, not come back with a grey bottom half.
ImageFile.LOAD_TRUNCATED_IMAGES = False

Box = tuple[float, float, float, float]


class UnreadableImageError(RuntimeError):
    """An image file that PIL cannot decode."""


def load_image(path: str, mode: str = "RGB", box: Optional[Box] = None) -> Image.Image:
    """Decode ``path`` fully and convert it to ``mode`` ("RGB" or "L"), optionally cropped to ``box`` (x1, y1, x2, y2).

    Grey, palette, CMYK and 16-bit images are converted; transparent ones (RGBA, LA, palette with transparency)
    are laid on a white background first, so transparent pixels do not turn into whatever colour they stored.
    """
    try:
        with Image.open(path) as opened:
            opened.load()  # decodes everything now: a truncated file fails here, not half-way through a transform
            image = opened
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")
            if image.mode in ("RGBA", "LA", "PA"):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                image = image.point(lambda value: value * (1 / 256)).convert("L")
            image = image.convert(mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"cannot read image {path}: {error}") from error
    if box is not None:
        image = image.crop(tuple(int(round(v)) for v in box))
    return image


class ImageFiles(Dataset):
    """``(image, target)`` pairs from a list of file paths; ``boxes`` (one per file, or None) crops each image.

    Unreadable files give ``None`` (dropped by ``skip_unreadable_collate``) and are remembered in a shared-memory
    flag per file, so the main process can count them even when worker processes did the reading.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: Sequence[Any],
        transform: Optional[Callable] = None,
        mode: str = "RGB",
        strict: bool = False,
        boxes: Optional[Sequence[Optional[Box]]] = None,
    ):
        if len(paths) != len(targets) or (boxes is not None and len(boxes) != len(paths)):
            raise ValueError("paths, targets and boxes must have the same length")
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
        self.paths, self.targets, self.boxes = list(paths), list(targets), boxes
        self.transform, self.mode, self.strict = transform, mode, strict
        self.unreadable = torch.zeros(len(self.paths), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Optional[tuple[Any, Any]]:
        path = self.paths[index]
        try:
            image = load_image(path, self.mode, self.boxes[index] if self.boxes is not None else None)
        except UnreadableImageError as error:
            if self.strict:
                raise UnreadableImageError(f"{error} (data.strict=true; set it to false to skip such files)") from error
            if not self.unreadable[index]:
                self.unreadable[index] = True
                warnings.warn(f"skipping {error}", stacklevel=2)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def unreadable_paths(self) -> list[str]:
        return [self.paths[i] for i in self.unreadable.nonzero().flatten().tolist()]


def skip_unreadable_collate(samples: list[Any]) -> Any:
    """``default_collate`` without the ``None`` entries that stand for unreadable images; an empty list when no
    image of the batch could be read, which the module's steps skip (not None, which Lightning skips before the
    step: under DDP the other ranks would wait for this one in the step's exchanges)."""
    kept = [sample for sample in samples if sample is not None]
    return default_collate(kept) if kept else []


def image_file_sets(dataset: Optional[Dataset]) -> list[ImageFiles]:
    """The ``ImageFiles`` inside ``dataset`` (through ``Subset`` and ``ConcatDataset``)."""
    if isinstance(dataset, ImageFiles):
        return [dataset]
    if isinstance(dataset, Subset):
        return image_file_sets(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return [found for part in dataset.datasets for found in image_file_sets(part)]
    return []
