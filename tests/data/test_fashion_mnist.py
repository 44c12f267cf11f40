"""Fashion-MNIST: torchvision's loader on files in the real IDX format, the local copy, the validation split."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torchvision import datasets

from abn.data import FashionMNISTDataModule
from abn.data.fashion_mnist import IDX_FILES, SYSTEM_COPIES, raw_folder

from ..conftest import make_fashion_mnist


def test_unpacks_the_system_copy_and_splits_off_validation(tmp_path, fashion_mnist_system_copy):
    module = FashionMNISTDataModule(
        root=str(tmp_path / "data"), search_dirs=[str(fashion_mnist_system_copy)], val_size=20, download=False,
        batch_size=16, num_workers=0,
    )
    module.prepare_data()
    assert all((raw_folder(tmp_path / "data") / name).is_file() for name in IDX_FILES)
    module.setup()
    assert (len(module.train_set), len(module.val_set), len(module.test_set)) == (100, 20, 40)
    assert not set(module.train_set.indices) & set(module.val_set.indices)
    images, labels = next(iter(module.test_dataloader()))
    assert images.shape == (16, 1, 28, 28) and labels.tolist() == [i % 10 for i in range(16)]
    # normalised with the Fashion-MNIST statistics: a 250 pixel maps to (250/255 - 0.286) / 0.353
    torch.testing.assert_close(images[0, 0, 2, 4], torch.tensor((250 / 255 - 0.2860) / 0.3530))
    assert module.denormalize(images).min() >= 0 and module.denormalize(images).max() <= 1


def test_split_is_seeded(tmp_path, fashion_mnist_system_copy):
    def val_indices(seed):
        module = FashionMNISTDataModule(root=str(tmp_path), search_dirs=[str(fashion_mnist_system_copy)],
                                        val_size=10, seed=seed, download=False, num_workers=0)
        module.setup()
        return module.val_set.indices

    assert val_indices(0) == val_indices(0) != val_indices(1)


def test_uncompressed_files_in_root_are_used_as_they_are(tmp_path):
    make_fashion_mnist(raw_folder(tmp_path), compress=False)
    module = FashionMNISTDataModule(root=str(tmp_path), search_dirs=[], val_size=0, in_chans=3, download=False,
                                    num_workers=0, batch_size=4)
    module.setup()
    images, _ = next(iter(module.train_dataloader()))
    assert images.shape == (4, 3, 28, 28)


def test_missing_data_without_download_names_the_folder_the_package_and_the_download(tmp_path):
    module = FashionMNISTDataModule(root=str(tmp_path), search_dirs=[str(tmp_path / "nowhere")], download=False)
    with pytest.raises(FileNotFoundError) as error:
        module.prepare_data()
    message = str(error.value)
    assert str(raw_folder(tmp_path)) in message and "apt-get install dataset-fashion-mnist" in message
    assert "data.download=false" in message and "Set data.download=true" in message and "failed" not in message


def test_failed_download_says_why_and_gives_the_offline_routes(tmp_path, monkeypatch):
    def no_network(self):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(datasets.FashionMNIST, "download", no_network)
    module = FashionMNISTDataModule(root=str(tmp_path), search_dirs=[], download=True)
    with pytest.raises(FileNotFoundError, match="downloading it failed .*URLError.*name resolution") as error:
        module.prepare_data()
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message and SYSTEM_COPIES[0] in message
    assert f"into {raw_folder(tmp_path)}" in message and all(name in message for name in IDX_FILES)
    assert "data.download" not in message  # it is on already
    assert not any(tmp_path.rglob("*-ubyte"))


@pytest.mark.parametrize("kwargs, message", [({"num_classes": 5}, "10 classes"), ({"in_chans": 2}, "in_chans")])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FashionMNISTDataModule(**kwargs)


def test_validation_split_larger_than_train(tmp_path, fashion_mnist_system_copy):
    module = FashionMNISTDataModule(root=str(tmp_path), search_dirs=[str(fashion_mnist_system_copy)],
                                    val_size=500, download=False)
    with pytest.raises(ValueError, match="leaves no training images"):
        module.setup()
