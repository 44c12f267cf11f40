"""Reading image files: colour modes converted, unreadable files skipped and counted, or an error under strict."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from abn.data.base import ClassificationDataModule
from abn.data.images import ImageFiles, UnreadableImageError, load_image, skip_unreadable_collate


def save(path: Path, image: Image.Image, **kwargs) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return str(path)


def truncated_jpeg(path: Path) -> str:
    """A JPEG cut in half, as an interrupted copy leaves it."""
    full = save(path, Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)), format="JPEG")
    data = Path(full).read_bytes()
    Path(full).write_bytes(data[: len(data) // 2])
    return full


@pytest.mark.parametrize(
    "mode, colour",
    [("L", 128), ("CMYK", (0, 255, 255, 0)), ("P", None), ("RGB", (10, 20, 30)), ("I;16", 40000)],
)
def test_every_colour_mode_becomes_rgb(tmp_path: Path, mode: str, colour):
    image = Image.new(mode, (6, 4), colour) if colour is not None else Image.new("RGB", (6, 4), (200, 0, 0)).convert("P")
    suffix = "tif" if mode in ("CMYK", "I;16") else "png"
    loaded = load_image(save(tmp_path / f"a.{suffix}", image), "RGB")
    assert loaded.mode == "RGB" and loaded.size == (6, 4)
    pixel = loaded.getpixel((0, 0))
    if mode == "L":
        assert pixel == (128, 128, 128)
    elif mode == "CMYK":
        assert pixel == (255, 0, 0)  # cyan 0, magenta and yellow full: red
    elif mode == "I;16":
        assert pixel == (156, 156, 156)  # 40000 / 256: 16-bit values scaled, not clipped to white


def test_transparent_pixels_are_laid_on_white(tmp_path: Path):
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    loaded = load_image(save(tmp_path / "a.png", rgba))
    assert loaded.getpixel((0, 0)) == (255, 255, 255) and loaded.getpixel((1, 1)) == (255, 0, 0)
    assert load_image(save(tmp_path / "b.png", rgba), "L").mode == "L"


def test_box_crops_the_image(tmp_path: Path):
    image = Image.new("RGB", (20, 10), (0, 0, 0))
    image.paste((255, 255, 255), (5, 2, 15, 8))
    loaded = load_image(save(tmp_path / "a.png", image), box=(5, 2, 15, 8))
    assert loaded.size == (10, 6) and np.asarray(loaded).min() == 255


@pytest.mark.parametrize("maker", ["truncated", "not an image", "empty"])
def test_unreadable_files_raise_a_named_error(tmp_path: Path, maker: str):
    if maker == "truncated":
        path = truncated_jpeg(tmp_path / "bad.jpg")
    else:
        path = str(tmp_path / "bad.jpg")
        Path(path).write_bytes(b"<html>404</html>" if maker == "not an image" else b"")
    with pytest.raises(UnreadableImageError, match="bad.jpg"):
        load_image(path)


def image_files(tmp_path: Path, strict: bool = False) -> ImageFiles:
    good = [save(tmp_path / f"good{i}.png", Image.new("RGB", (8, 8), (i * 40, 0, 0))) for i in range(5)]
    paths = good[:2] + [truncated_jpeg(tmp_path / "broken.jpg")] + good[2:]
    return ImageFiles(paths, list(range(6)), transforms.ToTensor(), strict=strict)


def test_unreadable_image_is_skipped_with_a_warning_naming_it(tmp_path: Path):
    files = image_files(tmp_path)
    with pytest.warns(UserWarning, match=r"skipping cannot read image .*broken\.jpg"):
        assert files[2] is None
    images, labels = skip_unreadable_collate([files[i] for i in range(6)])
    assert images.shape == (5, 3, 8, 8) and labels.tolist() == [0, 1, 3, 4, 5]
    assert files.unreadable_paths() == [str(tmp_path / "broken.jpg")]


def test_strict_stops_at_the_first_unreadable_image(tmp_path: Path):
    files = image_files(tmp_path, strict=True)
    with pytest.raises(UnreadableImageError, match=r"broken\.jpg.*strict=true"):
        files[2]


def test_a_batch_of_only_unreadable_images_is_empty_for_the_steps_to_skip():
    assert skip_unreadable_collate([None, None, None]) == []


class _FilesModule(ClassificationDataModule):
    def __init__(self, files: ImageFiles, num_workers: int):
        super().__init__(6, 3, batch_size=2, num_workers=num_workers, pin_memory=False)
        self.train_set = self.val_set = Subset(files, list(range(6)))
        self.test_set = files


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_data_module_counts_skipped_files_read_by_worker_processes(tmp_path: Path, num_workers: int):
    files = image_files(tmp_path)
    module = _FilesModule(files, num_workers)
    with warnings.catch_warnings(record=True) as caught:  # a worker process warns on its own stderr
        warnings.simplefilter("always")
        seen = sum(len(labels) for _, labels in module.train_dataloader())
    assert [str(w.message) for w in caught if "broken.jpg" in str(w.message)] or num_workers > 0
    assert seen in (4, 5)  # drop_last of the shuffled training loader may drop one good image; never the bad one
    with pytest.warns(UserWarning, match=r"1 unreadable image\(s\) were skipped \(1 in train; first: .*broken\.jpg"):
        found = module.report_unreadable()
    assert found == {"train": [str(tmp_path / "broken.jpg")]}


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="same length"):
        ImageFiles(["a.png"], [0, 1])
    with pytest.raises(ValueError, match="mode"):
        ImageFiles(["a.png"], [0], mode="CMYK")


def test_a_loader_of_good_files_is_the_plain_batch(tmp_path: Path):
    files = ImageFiles([save(tmp_path / "a.png", Image.new("RGB", (4, 4)))] * 3, [1, 2, 3], transforms.ToTensor())
    images, labels = next(iter(DataLoader(files, batch_size=3, collate_fn=skip_unreadable_collate)))
    assert images.shape == (3, 3, 4, 4) and torch.equal(labels, torch.tensor([1, 2, 3]))
