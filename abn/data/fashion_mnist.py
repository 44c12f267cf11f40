"""Fashion-MNIST (60k train / 10k test, 28×28 grey) through torchvision's loader, from a local copy if any."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.utils.data import Subset
from torchvision import datasets, transforms

from .base import ClassificationDataModule
from .device import OnDeviceLoaders

FASHION_MNIST_CLASSES = len(datasets.FashionMNIST.classes)  # 10 garment classes
# Where the Debian package ``dataset-fashion-mnist`` puts the original gzipped IDX files.
SYSTEM_COPIES = ("/usr/share/datasets/fashion-mnist",)
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def raw_folder(root: str | Path) -> Path:
    """The folder torchvision's ``FashionMNIST`` reads: ``<root>/FashionMNIST/raw``."""
    return Path(root) / "FashionMNIST" / "raw"


def copy_local_files(root: str | Path, search_dirs: Sequence[str | Path] = SYSTEM_COPIES) -> bool:
    """Make sure ``<root>/FashionMNIST/raw`` holds the four IDX files, unpacking them from a system copy if needed.

    Returns False when neither the root nor any of ``search_dirs`` has them.
    """
    target = raw_folder(root)
    if all((target / name).is_file() for name in IDX_FILES):
        return True
    for directory in map(Path, search_dirs):
        sources = {name: _find(directory, name) for name in IDX_FILES}
        if all(sources.values()):
            target.mkdir(parents=True, exist_ok=True)
            for name, source in sources.items():
                if (target / name).is_file():
                    continue
                partial = target / (name + ".part")
                opener = gzip.open if source.suffix == ".gz" else open
                with opener(source, "rb") as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                partial.replace(target / name)
            return True
    return False


def _find(directory: Path, name: str) -> Optional[Path]:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def missing_data_message(root: str | Path, download: bool, reason: str = "") -> str:
    """What is missing and the routes left: turning ``download`` on where it is off; after a failed download
    (``reason``), the offline ones."""
    offline = (
        f"install the Debian package dataset-fashion-mnist (`apt-get install dataset-fashion-mnist`; the files it puts "
        f"in {SYSTEM_COPIES[0]} are read from there), or copy the four files {', '.join(IDX_FILES)} (gzipped or not) "
        f"into {raw_folder(root)}"
    )
    if download:
        return (f"Fashion-MNIST is not in {raw_folder(root)} and downloading it failed ({reason}). Without the "
                f"download: {offline}.")
    return (f"Fashion-MNIST is not in {raw_folder(root)} and data.download=false. Set data.download=true on a machine "
            f"with internet access, or {offline}.")


def prepare_files(root: str | Path, search_dirs: Sequence[str | Path], download: bool) -> None:
    """The four IDX files in ``<root>/FashionMNIST/raw``: from a local copy, else downloaded if allowed, else a clear error."""
    if copy_local_files(root, search_dirs):
        return
    if not download:
        raise FileNotFoundError(missing_data_message(root, download=False))
    try:
        datasets.FashionMNIST(root, train=True, download=True)
        datasets.FashionMNIST(root, train=False, download=True)
    except Exception as error:  # no network, proxy, checksum: all end the same way for the user
        reason = f"{type(error).__name__}: {error}"
        raise FileNotFoundError(missing_data_message(root, download=True, reason=reason)) from error


class FashionMNISTDataModule(OnDeviceLoaders, ClassificationDataModule):
    """Fashion-MNIST with a validation split carved (seeded) from the 60k training images."""

    mean = (0.2860,)
    std = (0.3530,)
    input_size = 28
    title = "Fashion-MNIST"
    fixed_num_classes = FASHION_MNIST_CLASSES

    def __init__(
        self,
        root: str = "data",
        num_classes: int = FASHION_MNIST_CLASSES,
        in_chans: int = 1,
        val_size: int = 5000,
        seed: int = 0,
        augment: bool = True,
        download: bool = True,
        search_dirs: Sequence[str] = SYSTEM_COPIES,
        batch_size: int = 128,
        num_workers: int = 2,
        pin_memory: bool = False,
        on_device: bool = False,
    ):
        super().__init__(num_classes, in_chans, batch_size, num_workers, pin_memory)
        self.on_device = on_device
        if in_chans not in (1, 3):
            raise ValueError(f"Fashion-MNIST images are grey: in_chans must be 1 (or 3 to repeat them), got {in_chans}")
        if val_size < 0:
            raise ValueError(f"val_size must be ≥ 0, got {val_size}")
        self.root, self.val_size, self.seed = str(root), val_size, seed
        self.augment, self.download, self.search_dirs = augment, download, tuple(search_dirs)
        if in_chans == 3:
            self.mean, self.std = self.mean * 3, self.std * 3
        self.classes = list(datasets.FashionMNIST.classes)

    def prepare_data(self) -> None:
        prepare_files(self.root, self.search_dirs, self.download)

    def _transform(self, train: bool) -> transforms.Compose:
        steps = [transforms.RandomCrop(28, padding=2), transforms.RandomHorizontalFlip()] if train and self.augment else []
        steps += [transforms.ToTensor(), transforms.Normalize(self.mean[:1], self.std[:1])]
        if self.in_chans == 3:
            steps.append(transforms.Lambda(_to_three_channels))
        return transforms.Compose(steps)

    def device_augmentation(self) -> tuple[int, bool]:
        """What ``_transform(train=True)`` does, for ``on_device``: pad 2 and crop, flip."""
        return (2, True) if self.augment else (0, False)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None or self.test_set is not None:
            return
        self.prepare_data()  # cheap when the files are there; gives the clear message when they are not
        train_full = datasets.FashionMNIST(self.root, train=True, transform=self._transform(train=True))
        val_full = datasets.FashionMNIST(self.root, train=False, transform=self._transform(train=False))
        if self.val_size >= len(train_full):
            raise ValueError(f"val_size={self.val_size} leaves no training images (the training split has {len(train_full)})")
        order = torch.randperm(len(train_full), generator=torch.Generator().manual_seed(self.seed)).tolist()
        self.train_set = Subset(train_full, order[self.val_size :])
        if self.val_size > 0:
            held_out = datasets.FashionMNIST(self.root, train=True, transform=self._transform(train=False))
            self.val_set = Subset(held_out, order[: self.val_size])
        else:
            self.val_set = val_full
        self.test_set = val_full


def _to_three_channels(image: torch.Tensor) -> torch.Tensor:
    return image.expand(3, -1, -1)
