"""``data=folder``: a user's own images in class folders, both layouts, through the real loader and abn-train."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from abn.data import FolderDataModule
from abn.data.folder import UnreadableMaskError
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


def test_an_unreadable_image_alone_in_its_batch_is_skipped_and_training_goes_on(tmp_path: Path):
    images = tmp_path / "images"
    write_class_folders(images, {"a": 4, "b": 4}, size=(32, 32))
    broken = sorted((images / "a").iterdir())[0]
    broken.write_bytes(b"broken")
    cfg = compose_train_config(tmp_path, [
        "data=folder", f"data.root={images}", "data.image_size=32", "data.resize_only=true", "data.val_size=0",
        "data.test_size=2", "data.num_workers=0", "data.batch_size=1", "model.arch=resnet20", "trainer=cpu",
        "trainer.max_epochs=2", "logger=none", "callbacks.attention_images=null",
    ])
    with pytest.warns(UserWarning, match=r"1 unreadable image\(s\) were skipped \(1 in train; first: .*" + broken.name):
        metrics = train(cfg)
    GlobalHydra.instance().clear()
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    # 6 training images a batch each, 2 epochs: the broken one's 2 steps make no update
    # 2 epochs of 6 training images, a batch each (the broken one's steps make no update, Lightning counts them)
    assert saved["epoch"] == 1 and saved["global_step"] == 12 and 0 <= metrics["test/acc"] <= 1


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


# ---- masks for attention supervision (data.mask_dir) ----

MARKER = (slice(8, 24), slice(4, 20))  # rows, columns of the marker: left of centre, so a mirror moves it


def write_marked_images(root: Path, masks: Optional[Path], counts: dict[str, int], size=(48, 40),
                        mask_modes: tuple[str, ...] = ("L",), mask_scale: int = 1) -> None:
    """``root/<class>/<i>.jpg``: black images with a white marker, and where ``masks`` is given the mask of each,
    ``masks/<class>/<i>.png``, white on the marker (in the modes ``mask_modes`` cycle through; ``mask_scale`` > 1
    stores it that many times smaller than its image)."""
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.zeros((size[1], size[0]), dtype=np.uint8)
            pixels[MARKER] = 255
            Image.fromarray(pixels).convert("RGB").save(root / name / f"{i}.jpg", quality=95)
            if masks is None:
                continue
            (masks / name).mkdir(parents=True, exist_ok=True)
            mask = Image.fromarray(pixels[::mask_scale, ::mask_scale])
            mode = mask_modes[i % len(mask_modes)]
            mask = Image.fromarray(np.asarray(mask, dtype=np.uint16) * 257) if mode == "I;16" else mask.convert(mode)
            mask.save(masks / name / f"{i}.png")


def split_folders_with_masks(root: Path, train: int = 4, mask_modes: tuple[str, ...] = ("L",),
                             mask_scale: int = 1) -> tuple[Path, Path]:
    """``root/images/{train,val,test}/{a,b}/*.jpg`` and the training masks in ``root/masks/train/{a,b}/*.png``."""
    images, masks = root / "images", root / "masks"
    write_marked_images(images / "train", masks / "train", {"a": train, "b": train}, mask_modes=mask_modes,
                        mask_scale=mask_scale)
    for split in ("val", "test"):
        write_marked_images(images / split, None, {"a": 1, "b": 1})
    return images, masks


def marker_agreement(dm: FolderDataModule, image: torch.Tensor, mask: torch.Tensor) -> float:
    """Intersection over union of the image's bright pixels (the marker) and the mask's."""
    bright = dm.denormalize(image[None])[0].mean(dim=0) > 0.5
    marked = mask[0] > 0.5
    return float((bright & marked).sum() / (bright | marked).sum().clamp(min=1))


def assert_masks_follow_their_images(dm: FolderDataModule, draws: int = 24) -> None:
    """The training samples' masks cover their markers through random crops and flips."""
    torch.manual_seed(0)
    visible, mirrored_fails = 0, 0
    for draw in range(draws):
        image, label, mask = dm.train_set[draw % len(dm.train_set)]
        assert mask.shape == (1, 32, 32) and mask.dtype == torch.float32 and 0 <= mask.min() and mask.max() <= 1
        if mask.sum() < 16:  # the crop missed the marker
            continue
        visible += 1
        # masks are resampled with nearest neighbour, images bilinearly: the edges may differ by a pixel
        assert marker_agreement(dm, image, mask) > 0.7
        mirrored_fails += marker_agreement(dm, image, mask.flip(-1)) < 0.3  # a mask left unmirrored would fail
    assert visible >= draws // 3 and mirrored_fails >= 1


def test_masks_follow_their_images_through_crop_and_flip(tmp_path: Path):
    images, masks = split_folders_with_masks(tmp_path, mask_modes=("L", "1", "RGB", "P", "I;16"))
    dm = module(images, mask_dir=str(masks), resize_only=False, hflip=True)
    dm.setup()
    assert dm.supervision == "masks"
    assert_masks_follow_their_images(dm)


def test_a_mask_of_another_size_is_resized_to_its_image(tmp_path: Path):
    images, masks = split_folders_with_masks(tmp_path, mask_scale=2)
    assert Image.open(masks / "train" / "a" / "0.png").size == (24, 20)
    dm = module(images, mask_dir=str(masks), resize_only=False, hflip=True)
    dm.setup()
    assert_masks_follow_their_images(dm)


def test_training_batches_carry_masks_and_evaluation_batches_do_not(tmp_path: Path):
    images, masks = split_folders_with_masks(tmp_path)
    dm = module(images, mask_dir=str(masks))
    dm.setup()
    images_batch, labels, mask_batch = next(iter(dm.train_dataloader()))
    assert images_batch.shape == (4, 3, 32, 32) and labels.shape == (4,) and mask_batch.shape == (4, 1, 32, 32)
    assert mask_batch.isfinite().all() and set(mask_batch.unique().tolist()) == {0.0, 1.0}
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        assert all(len(batch) == 2 for batch in loader)


def test_images_without_a_mask_train_unsupervised_and_are_counted_once(tmp_path: Path):
    images, masks = split_folders_with_masks(tmp_path)
    (masks / "train" / "b" / "1.png").unlink()
    dm = module(images, mask_dir=str(masks))
    with pytest.warns(UserWarning, match=r"1 of 8 training images have no mask in .*masks \(first: .*b/1.jpg expects "
                                         r".*masks/train/b/1.png.*they train without attention supervision"):
        dm.setup()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.setup()  # set up already: not counted again
        samples = [dm.train_set[i] for i in range(len(dm.train_set))]
    unsupervised = [Path(dm.train_set.paths[i]).relative_to(images).as_posix() for i, (_, _, mask) in
                    enumerate(samples) if not mask.isfinite().all()]
    assert unsupervised == ["train/b/1.jpg"]
    assert samples[dm.train_set.paths.index(str(images / "train" / "b" / "1.jpg"))][2].isnan().all()


def test_a_training_split_without_any_mask_is_refused(tmp_path: Path):
    images, _ = split_folders_with_masks(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ValueError, match=r"none of the 8 training images has a mask in data.mask_dir=.*elsewhere "
                                         r"\(.*a/0.jpg expects .*elsewhere/train/a/0.png"):
        module(images, mask_dir=str(tmp_path / "elsewhere")).setup()


def test_a_missing_mask_folder_is_refused(tmp_path: Path):
    images, _ = split_folders_with_masks(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"data.mask_dir=.*nowhere does not exist"):
        module(images, mask_dir=str(tmp_path / "nowhere")).setup()


def test_a_mask_that_is_not_an_image_stops_the_setup_naming_it(tmp_path: Path):
    images, masks = split_folders_with_masks(tmp_path)
    (masks / "train" / "a" / "2.png").write_bytes(b"not a png")
    with pytest.raises(UnreadableMaskError, match=r"cannot read mask .*masks/train/a/2.png"):
        module(images, mask_dir=str(masks)).setup()


def test_a_truncated_mask_stops_the_run_when_read_naming_it(tmp_path: Path):
    images, masks = split_folders_with_masks(tmp_path)
    broken = masks / "train" / "a" / "2.png"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    dm = module(images, mask_dir=str(masks))
    dm.setup()  # the header is whole: found at setup
    index = dm.train_set.paths.index(str(images / "train" / "a" / "2.jpg"))
    with pytest.raises(UnreadableMaskError, match=r"cannot read mask .*masks/train/a/2.png"):
        dm.train_set[index]


def test_a_share_of_masks_on_held_out_class_folders_with_an_unreadable_image(tmp_path: Path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_marked_images(images, masks, {"a": 8, "b": 8})
    (images / "a" / "3.jpg").write_bytes(b"broken")  # skipped, as without masks
    dm = module(images, mask_dir=str(masks), val_size=2, test_size=2, supervised_fraction=0.5)
    dm.setup()
    partial = dm.supervised_training_set()  # what the training loader reads
    assert len(partial) == 12 and int(partial.supervised.sum()) == 6
    with pytest.warns(UserWarning, match="skipping cannot read image"):
        samples = [partial[i] for i in range(len(partial))]
    assert sum(sample is None for sample in samples) == 1  # the broken image is a training one
    for chosen, sample in zip(partial.supervised.tolist(), samples):
        assert sample is None or bool(sample[2].isfinite().all()) == chosen
    batches = list(dm.train_dataloader())  # the broken one is dropped from its batch
    assert sum(len(batch[0]) for batch in batches) == 11 and all(batch[2].shape[1:] == (1, 32, 32) for batch in batches)
    assert all(len(batch) == 2 for batch in dm.val_dataloader())


def test_abn_train_supervises_the_map_with_the_folder_masks(tmp_path: Path):
    images, masks = split_folders_with_masks(tmp_path)
    cfg = compose_train_config(tmp_path, [
        "data=folder", f"data.root={images}", f"data.mask_dir={masks}", "data.supervised_fraction=0.5",
        "data.image_size=32", "data.resize_only=true", "data.num_workers=0", "data.batch_size=4",
        "model.arch=resnet20", "model.attention_supervision.loss=l1", "trainer=cpu", "trainer.fast_dev_run=true",
        "logger=none", "callbacks=none",
    ])
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    assert "train/loss_sup" in metrics and "test/acc" in metrics
