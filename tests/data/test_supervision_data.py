"""Ground truth for attention supervision: which data modules carry it, and ``supervised_fraction``'s seeded share."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torch.utils.data import Dataset

from abn.data import ClutteredFashionMNISTDataModule, FolderDataModule, MultiShapesDataModule, ShapesDataModule
from abn.data.base import PartialSupervision

from ..conftest import compose_train_config
from .test_cluttered import make_module


class Numbered(Dataset):
    """Sample i is (image, label, box) with box (i, i, i + 1, i + 1); every third one is unreadable (None)."""

    def __init__(self, count: int, dtype: torch.dtype = torch.float32):
        self.count, self.dtype = count, dtype

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if index % 3 == 2:
            return None
        return torch.zeros(1, 2, 2), index, torch.tensor([index, index, index + 1, index + 1], dtype=self.dtype)


def supervised_indices(dataset: Dataset) -> list[int]:
    """The indices whose sample has a finite box or mask."""
    return [i for i in range(len(dataset)) if dataset[i] is not None and dataset[i][2].isfinite().all()]


@pytest.mark.parametrize("fraction, count", [(0.25, 10), (0.5, 20), (1 / 40, 1), (0.001, 1)])
def test_the_share_is_exact_seeded_and_the_others_get_nan(fraction: float, count: int):
    partial = PartialSupervision(Numbered(40), fraction, seed=3)
    assert int(partial.supervised.sum()) == count  # round(fraction × 40), at least one
    assert torch.equal(PartialSupervision(Numbered(40), fraction, seed=3).supervised, partial.supervised)
    for i in range(40):
        sample = partial[i]
        if i % 3 == 2:
            assert sample is None  # an unreadable image stays for the collate function to drop
        elif partial.supervised[i]:
            assert sample[1] == i and sample[2].tolist() == [i, i, i + 1, i + 1]
        else:
            assert sample[1] == i and sample[2].shape == (4,) and sample[2].isnan().all()


def test_another_seed_chooses_other_images():
    a = PartialSupervision(Numbered(40), 0.5, seed=0).supervised
    assert not torch.equal(a, PartialSupervision(Numbered(40), 0.5, seed=1).supervised)


def test_integer_boxes_become_float_so_kept_and_emptied_ones_batch_together():
    partial = PartialSupervision(Numbered(6, torch.int64), 0.5, seed=0)
    readable = (0, 1, 3, 4)
    boxes = torch.stack([partial[i][2] for i in readable])
    assert boxes.dtype == torch.float32
    assert boxes.isnan().all(dim=1).tolist() == [not partial.supervised[i] for i in readable]


def test_shapes_training_loader_keeps_the_same_share_in_every_epoch():
    module = ShapesDataModule(train_size=40, val_size=8, test_size=8, batch_size=8, seed=5, supervised_fraction=0.25)
    module.setup()
    chosen = supervised_indices(module.supervised_training_set())
    assert len(chosen) == 10 and supervised_indices(module.supervised_training_set()) == chosen
    for epoch in range(2):
        _, _, boxes = zip(*module.train_dataloader())
        boxes = torch.cat(boxes)
        assert boxes.shape == (40, 4) and int(boxes.isfinite().all(dim=1).sum()) == 10
        assert boxes.isfinite().all(dim=1).sum() + boxes.isnan().all(dim=1).sum() == 40  # whole rows, no mixture
    for loader in (module.val_dataloader(), module.test_dataloader()):  # evaluation keeps every box
        assert all(batch[2].isfinite().all() for batch in loader)
    again = ShapesDataModule(train_size=40, val_size=8, test_size=8, batch_size=8, seed=5, supervised_fraction=0.25)
    again.setup()
    assert supervised_indices(again.supervised_training_set()) == chosen


def test_all_boxes_are_kept_by_default():
    module = ShapesDataModule(train_size=16, val_size=8, test_size=8, batch_size=8)
    module.setup()
    assert module.supervised_training_set() is module.train_set
    assert all(batch[2].isfinite().all() for batch in module.train_dataloader())


def test_cluttered_fashion_mnist_keeps_a_share_of_its_training_boxes(tmp_path: Path, fashion_mnist_system_copy):
    module = make_module(tmp_path, fashion_mnist_system_copy, supervised_fraction=0.5)
    assert module.supervision == "boxes"
    loader = module.train_dataloader()
    assert len(supervised_indices(loader.dataset)) == 55  # half of the 110 training images
    assert next(iter(loader))[2].dtype == torch.float32
    assert all(batch[2].isfinite().all() for batch in module.val_dataloader())


def test_which_data_modules_carry_ground_truth():
    assert ShapesDataModule.supervision == "boxes" and ClutteredFashionMNISTDataModule.supervision == "boxes"
    assert MultiShapesDataModule.supervision is None  # T boxes per image: no single-map ground truth
    assert MultiShapesDataModule().supervision is None and FolderDataModule().supervision is None
    assert FolderDataModule(mask_dir="masks").supervision == "masks"


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
@pytest.mark.parametrize("module_class", [ShapesDataModule, ClutteredFashionMNISTDataModule, FolderDataModule])
def test_a_fraction_outside_zero_to_one_is_refused(module_class, fraction: float):
    masks = {"mask_dir": "masks"} if module_class is FolderDataModule else {}
    with pytest.raises(ValueError, match=r"data.supervised_fraction must be in \(0, 1\]"):
        module_class(supervised_fraction=fraction, **masks)


def test_a_fraction_of_folder_images_without_masks_is_refused():
    with pytest.raises(ValueError, match=r"data.supervised_fraction=0.5 .* set data.mask_dir"):
        FolderDataModule(supervised_fraction=0.5)


@pytest.mark.parametrize("name, overrides, supervision", [
    ("shapes", ["data.supervised_fraction=0.25"], "boxes"),
    ("cluttered_fashion_mnist", ["data.supervised_fraction=0.25"], "boxes"),
    ("folder", ["data.mask_dir=/data/masks", "data.supervised_fraction=0.25"], "masks"),
])
def test_the_configs_pass_the_fraction_and_the_mask_folder(tmp_path: Path, name: str, overrides: list[str],
                                                           supervision: str):
    default = compose_train_config(tmp_path, [f"data={name}"])
    assert default.data.supervised_fraction == 1.0
    module = instantiate(compose_train_config(tmp_path, [f"data={name}", *overrides]).data)
    GlobalHydra.instance().clear()
    assert module.supervised_fraction == 0.25 and module.supervision == supervision
    if name == "folder":
        assert default.data.mask_dir is None and module.mask_dir == "/data/masks"
