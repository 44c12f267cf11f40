"""What every data module of the project offers beyond Lightning's interface."""

from __future__ import annotations

from typing import Callable, Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset


class ClassificationDataModule(L.LightningDataModule):
    """Holds the normalisation (``mean``, ``std``), ``classes``, and builds the three loaders.

    Subclasses fill ``train_set``, ``val_set`` and ``test_set`` in ``setup``.
    """

    mean: Sequence[float] = (0.0,)
    std: Sequence[float] = (1.0,)

    def __init__(self, num_classes: int, in_chans: int, batch_size: int, num_workers: int, pin_memory: bool):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.classes: list[str] = []
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def normalize(self, image: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
        return (image - mean) / std

    def denormalize(self, images: Tensor) -> Tensor:
        """Undo the normalisation of a batch (B×C×H×W) for display: values back in [0, 1]."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (images * std + mean).clamp(0.0, 1.0)

    def assign_splits(self, train: Dataset, eval_view: Callable[[], Dataset], test: Dataset, val_size: int, seed: int,
                      where: str) -> None:
        """Validate on ``val_size`` held-out training images (``eval_view()``: the same images with the evaluation
        transform), or on the test set when ``val_size`` is 0; every split must have images."""
        if val_size > 0:
            self.train_set, self.val_set = hold_out(train, eval_view(), val_size, seed)
        else:
            self.train_set, self.val_set = train, test
        self.test_set = test
        for name in ("train", "val", "test"):
            check_not_empty(name, getattr(self, f"{name}_set"), where)

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not been called")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle and len(dataset) > self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


def hold_out(train_view: Dataset, eval_view: Dataset, val_size: int, seed: int) -> tuple[Dataset, Dataset]:
    """Split a training set into (train, validation) subsets, seeded; ``eval_view`` is the same images with the
    evaluation transform, so validation images are not augmented."""
    total = len(train_view)
    if not 0 < val_size < total:
        raise ValueError(f"val_size={val_size} must be between 1 and {total - 1} (the training split has {total} images)")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(train_view, order[val_size:]), Subset(eval_view, order[:val_size])


def check_not_empty(name: str, dataset: Dataset, where: str) -> None:
    if len(dataset) == 0:
        raise ValueError(f"the {name} split is empty ({where}); check the data root and the split options")
