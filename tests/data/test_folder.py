"""``data=folder``: a user's own images in class folders, both layouts, through the real loader and abn-train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from abn.data import FolderDataModule
from abn.module import ABNModule
from abn.train import train

from ..conftest import compose_train_config, record_instantiated


def write_class_folders(root: Path, counts: dict[str, int], modes: tuple[str, ...] = ("RGB",), size=(40, 36)) -> None:
    """``root/<class>/<i>.png``; the images cycle through ``modes`` (grey, RGBA, CMYK … as users' folders hold)."""
    rng = np.random.default_rng(len(counts))
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            mode = modes[i % len(modes)]
            image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
            image.save(root / name / f"{i}.{'jpg' if mode == 'CMYK' else 'png'}")


def module(root: Path, **kwargs) -> FolderDataModule:
    options = dict(root=str(root), image_size=32, resize_only=True, batch_size=4, num_workers=0)
    options.update(kwargs)
    return FolderDataModule(**options)


def test_class_folders_are_split_seeded_into_train_val_test(tmp_path: Path):
    write_class_folders(tmp_path, {"cat": 10, "dog": 10, "owl": 10}, modes=("RGB", "L", "RGBA", "CMYK"))
    dm = module(tmp_path, val_size=0.2, test_size=6, seed=1)
    dm.setup()
    assert dm.classes == ["cat", "dog", "owl"] and dm.num_classes == 3
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (19, 5, 6)

    def paths(subset) -> set[str]:
        return {subset.dataset.paths[i] for i in subset.indices}

    train, val, test = paths(dm.train_set), paths(dm.val_set), paths(dm.test_set)
    assert not (train & val or train & test or val & test) and len(train | val | test) == 30
    again = module(tmp_path, val_size=0.2, test_size=6, seed=1)
    again.setup()
    assert paths(again.val_set) == val and paths(again.test_set) == test
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and labels.dtype == torch.int64  # grey, RGBA and CMYK all became RGB


def test_split_folders_are_used_as_they_are(tmp_path: Path):
    for split, count in (("train", 4), ("val", 2), ("test", 3)):
        write_class_folders(tmp_path / split, {"a": count, "b": count})
    dm = module(tmp_path)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (8, 4, 6)
    images, labels = next(iter(dm.test_dataloader()))
    assert labels.tolist() == [0, 0, 0, 1]
    raw = np.array(Image.open(tmp_path / "test" / "a" / "0.png").convert("RGB").resize((32, 32), Image.BILINEAR))
    expected = torch.from_numpy(raw).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(dm.denormalize(images[:1])[0], expected, atol=0.02, rtol=0)


def test_missing_val_folder_is_held_out_from_train_and_test_is_kept(tmp_path: Path):
    write_class_folders(tmp_path / "train", {"a": 5, "b": 5})
    write_class_folders(tmp_path / "test", {"a": 2, "b": 2})
    dm = module(tmp_path, val_size=2)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (8, 2, 4)


def test_grey_model_input(tmp_path: Path):
    write_class_folders(tmp_path, {"a": 4, "b": 4}, modes=("RGB", "L"))
    dm = module(tmp_path, in_chans=1, val_size=2, test_size=2)
    dm.setup()
    images, _ = next(iter(dm.test_dataloader()))
    assert images.shape[1] == 1 and dm.mean == (0.5,)


def test_missing_root_says_what_layout_is_expected(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"data.root=.*nowhere does not exist.*<root>/<class>/\*\.jpg"):
        module(tmp_path / "nowhere").setup()


def test_root_without_class_folders_is_refused(tmp_path: Path):
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="has no class folders"):
        module(tmp_path).setup()


def test_empty_class_folder_is_named(tmp_path: Path):
    write_class_folders(tmp_path, {"a": 4})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"class folder\(s\) without images .*: b"):
        module(tmp_path).setup()


def test_val_folder_with_a_class_train_lacks_is_refused(tmp_path: Path):
    write_class_folders(tmp_path / "train", {"a": 2, "b": 2})
    write_class_folders(tmp_path / "val", {"a": 1, "c": 1})
    with pytest.raises(ValueError, match="class folders the training split lacks: c"):
        module(tmp_path).setup()


def test_configured_class_count_must_match_the_folders(tmp_path: Path):
    write_class_folders(tmp_path, {"a": 4, "b": 4})
    with pytest.raises(ValueError, match=r"the data has 2 classes but data.num_classes=5"):
        module(tmp_path, num_classes=5).setup()


def test_too_large_held_out_split_is_refused(tmp_path: Path):
    write_class_folders(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(ValueError, match=r"data.test_size gives 4 of 4 images"):
        module(tmp_path, test_size=4).setup()


def test_checkpoint_of_other_classes_is_refused(tmp_path: Path):
    write_class_folders(tmp_path, {"a": 3, "b": 3})
    dm = module(tmp_path, val_size=1, test_size=1)
    dm.setup()
    dm.load_state_dict(dm.state_dict())  # same classes: accepted
    with pytest.raises(ValueError, match=r"trained on 2 classes .* another order \(0: 'b' → 'a'"):
        dm.load_state_dict({"classes": ["b", "a"]})


def test_abn_train_takes_the_class_count_from_the_folders(tmp_path: Path, monkeypatch):
    write_class_folders(tmp_path / "images", {"a": 6, "b": 6, "c": 6}, modes=("RGB", "L"))
    cfg = compose_train_config(tmp_path, [
        "data=folder", f"data.root={tmp_path / 'images'}", "data.image_size=32", "data.resize_only=true",
        "data.num_workers=0", "data.batch_size=4", "model.arch=resnet20", "trainer=cpu", "trainer.fast_dev_run=true",
        "logger=none", "callbacks=none",
    ])
    assert cfg.data.num_classes is None
    built = record_instantiated(monkeypatch)
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    model = next(obj for obj in built if isinstance(obj, ABNModule))  # handed the count; the config is left as it is
    assert model.hparams.num_classes == 3 and "test/acc" in metrics


def test_checkpoint_keeps_the_class_names_and_resuming_on_other_classes_is_refused(tmp_path: Path):
    images = tmp_path / "images"
    write_class_folders(images, {"ant": 4, "bee": 4}, size=(32, 32))
    common = [f"data.root={images}", "data=folder", "data.image_size=32", "data.resize_only=true", "data.val_size=2",
              "data.test_size=2", "data.num_workers=0", "data.batch_size=4", "model.arch=resnet20", "trainer=cpu",
              "trainer.max_epochs=1", "logger=none"]
    train(compose_train_config(tmp_path / "first", common))
    GlobalHydra.instance().clear()
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["FolderDataModule"]["classes"] == ["ant", "bee"]
    (images / "bee").rename(images / "aardvark")  # same count, another class at index 0
    resumed = compose_train_config(tmp_path / "second", common + [f"ckpt_path={last}", "trainer.max_epochs=2"])
    with pytest.raises(ValueError, match=r"another order \(0: 'ant' → 'aardvark'"):
        train(resumed)
    GlobalHydra.instance().clear()
