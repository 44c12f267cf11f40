"""CIFAR-10/100 and SVHN data modules on tiny copies in each data set's real on-disk format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from abn.data import CIFAR10DataModule, CIFAR100DataModule, SVHNDataModule
from abn.data.standins import write_standin_cifar, write_standin_svhn
from abn.train import train

from ..conftest import compose_train_config


def write_cifar(root: Path, hundred: bool) -> None:
    """A tiny CIFAR: six training images per file (CIFAR-10 has five files, CIFAR-100 one), five test images."""
    write_standin_cifar(root, hundred, train_per_file=6, test=5)


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_reads_the_pickled_batches(tmp_path: Path, hundred: bool):
    write_cifar(tmp_path, hundred)
    module_class = CIFAR100DataModule if hundred else CIFAR10DataModule
    dm = module_class(root=str(tmp_path), download=False, batch_size=4, num_workers=0)
    dm.setup()
    assert dm.num_classes == (100 if hundred else 10) and len(dm.classes) == dm.num_classes
    expected_train = 6 if hundred else 30
    assert len(dm.train_set) == expected_train and len(dm.test_set) == 5 and dm.val_set is dm.test_set
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (4, 3, 32, 32) and labels.dtype == torch.int64
    # normalised with the official statistics: de-normalising gives back pixel values in [0, 1]
    raw = torch.from_numpy(dm.test_set.data[:4]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(dm.denormalize(images), raw, atol=1e-5, rtol=0)


def test_cifar_validation_split_is_held_out_and_seeded(tmp_path: Path):
    write_cifar(tmp_path, hundred=False)
    splits = []
    for _ in range(2):
        dm = CIFAR10DataModule(root=str(tmp_path), download=False, val_size=8, seed=3, num_workers=0)
        dm.setup()
        splits.append((sorted(dm.train_set.indices), sorted(dm.val_set.indices)))
    (train_idx, val_idx), again = splits
    assert len(val_idx) == 8 and len(train_idx) == 22 and not set(train_idx) & set(val_idx)
    assert splits[1] == (train_idx, val_idx)


def test_cifar_missing_data_names_the_folder_and_the_archive(tmp_path: Path):
    dm = CIFAR100DataModule(root=str(tmp_path), download=False, num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.*cifar-100-python.tar.gz.*cs.toronto.edu"):
        dm.setup()


def test_cifar_wrong_class_count_is_refused():
    with pytest.raises(ValueError, match="CIFAR-100 has 100 classes"):
        CIFAR100DataModule(num_classes=10)


@pytest.mark.parametrize("use_extra", [False, True])
def test_svhn_reads_the_mat_files_and_adds_extra(tmp_path: Path, use_extra: bool):
    write_standin_svhn(tmp_path, {"train": 7, "test": 5, "extra": 9})
    dm = SVHNDataModule(root=str(tmp_path), download=False, use_extra=use_extra, batch_size=5, num_workers=0)
    dm.setup()
    assert len(dm.train_set) == (16 if use_extra else 7) and len(dm.test_set) == 5
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (5, 3, 32, 32) and 0 <= labels.min() and labels.max() <= 9


def test_svhn_missing_extra_names_the_file(tmp_path: Path):
    write_standin_svhn(tmp_path, {"train": 3, "test": 3})
    dm = SVHNDataModule(root=str(tmp_path), download=False, use_extra=True, num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"extra_32x32\.mat.*ufldl\.stanford\.edu"):
        dm.setup()


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "svhn"])
def test_fast_dev_run_through_hydra(tmp_path: Path, dataset: str):
    data_dir = tmp_path / "data"
    if dataset == "svhn":
        write_standin_svhn(data_dir, {"train": 8, "test": 4})
    else:
        write_cifar(data_dir, hundred=dataset == "cifar100")
    cfg = compose_train_config(tmp_path, [
        f"data={dataset}", f"paths.data_dir={data_dir}", "data.download=false", "data.num_workers=0",
        "data.batch_size=4", "model.arch=resnet20", "trainer=cpu", "trainer.fast_dev_run=true", "logger=none",
        "callbacks=none",
    ])
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    assert cfg.model.num_classes == (100 if dataset == "cifar100" else 10) and "test/acc" in metrics
