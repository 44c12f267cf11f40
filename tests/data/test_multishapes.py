"""The embedded multi-attribute data set: deterministic, one tight box per present attribute, objects apart,
balanced attributes, boxes that follow the flip, and a multilabel ABN run through Hydra."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from abn.data import SHAPE_NAMES, MultiShapesDataModule
from abn.data.multishapes import MIN_OBJECT_PIXELS, generate_multishapes_split

from ..conftest import compose_train_config


@pytest.fixture(scope="module")
def val_split():
    return generate_multishapes_split(300, 5, 3, "val")


def _object_pixels(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The object's colour (the most frequent exact colour in its box: noise makes background pixels unique) and
    the S×S mask of the pixels of that colour."""
    x0, y0, x1, y1 = box.astype(int)
    colours, counts = np.unique(image[y0:y1, x0:x1].reshape(-1, 3), axis=0, return_counts=True)
    colour = colours[counts.argmax()]
    return colour, (image == colour).all(axis=-1)


def _same_split(a, b) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2].nan_to_num(-1), b[2].nan_to_num(-1))


def test_same_seed_same_images_other_seed_or_split_other_images():
    a = generate_multishapes_split(20, 5, 3, "train", seed=3)
    assert _same_split(a, generate_multishapes_split(20, 5, 3, "train", seed=3))
    assert not torch.equal(a[0], generate_multishapes_split(20, 5, 3, "train", seed=4)[0])
    assert not torch.equal(a[0], generate_multishapes_split(20, 5, 3, "test", seed=3)[0])


def test_a_sample_is_the_same_whatever_else_is_drawn():
    """Each image comes from its own generator: image 7 of a split of 8 is image 7 of a split of 30."""
    short, long = generate_multishapes_split(8, 5, 3, "train"), generate_multishapes_split(30, 5, 3, "train")
    assert torch.equal(short[0][7], long[0][7]) and torch.equal(short[1][7], long[1][7])


def test_shapes_and_types(val_split):
    images, targets, boxes = val_split
    assert images.shape == (300, 3, 48, 48) and images.dtype == torch.uint8
    assert targets.shape == (300, 5) and targets.dtype == torch.float32
    assert boxes.shape == (300, 5, 4) and boxes.dtype == torch.float32
    assert set(targets.unique().tolist()) == {0.0, 1.0}


def test_present_attributes_have_boxes_and_absent_ones_nan(val_split):
    _, targets, boxes = val_split
    present = targets.bool()
    assert boxes[~present].isnan().all()
    inside = boxes[present]
    assert not inside.isnan().any()
    assert (inside[:, :2] >= 0).all() and (inside[:, 2:] <= 48).all()
    sides = inside[:, 2:] - inside[:, :2]
    assert (sides >= MIN_OBJECT_PIXELS).all() and (sides <= 0.4 * 48).all()


def test_every_image_has_one_to_max_objects(val_split):
    counts = val_split[1].sum(1)
    assert counts.min() == 1 and counts.max() == 3
    ten = generate_multishapes_split(60, 10, 6, "val", image_size=64)[1].sum(1)
    assert ten.min() >= 1 and ten.max() <= 6


def test_every_attribute_is_present_in_about_the_same_share_without_strong_correlation():
    _, targets, _ = generate_multishapes_split(1000, 5, 3, "train")
    share = targets.mean(0)
    assert ((share > 0.35) & (share < 0.55)).all(), share
    correlation = torch.corrcoef(targets.T)
    off_diagonal = correlation[~torch.eye(5, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.3, correlation


def _assert_objects_apart(targets: torch.Tensor, boxes: torch.Tensor) -> None:
    """The boxes of one image's objects neither overlap nor touch: at least one pixel lies between them."""
    for image_boxes, present in zip(boxes, targets.bool()):
        drawn = image_boxes[present]
        a, b = drawn[:, None], drawn[None]
        apart = ((a[..., 2] + 1 <= b[..., 0]) | (b[..., 2] + 1 <= a[..., 0])
                 | (a[..., 3] + 1 <= b[..., 1]) | (b[..., 3] + 1 <= a[..., 1]))
        assert (apart | torch.eye(len(drawn), dtype=torch.bool)).all(), f"overlapping boxes {drawn.tolist()}"


def test_objects_of_one_image_do_not_overlap(val_split):
    _assert_objects_apart(val_split[1], val_split[2])


@pytest.mark.parametrize("num_attributes", [5, 10])
def test_each_box_is_the_tight_box_of_its_objects_pixels(num_attributes):
    """The pixels of a present attribute's object have one colour, far from the background, all inside its box and
    touching each of its sides; every kind gets drawn."""
    images, targets, boxes = generate_multishapes_split(60, num_attributes, 3, "test")
    drawn_kinds = set()
    for image, present, image_boxes in zip(images.permute(0, 2, 3, 1).numpy(), targets.bool(), boxes.numpy()):
        background = np.median(image.reshape(-1, 3), axis=0)
        for kind in present.nonzero().flatten().tolist():
            colour, mask = _object_pixels(image, image_boxes[kind])
            assert np.abs(colour.astype(int) - background).sum() > 150, "the object looks like the background"
            x0, y0, x1, y1 = image_boxes[kind].astype(int)
            assert mask[y0:y1, x0:x1].sum() >= 0.3 * (x1 - x0) * (y1 - y0)
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            assert (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) == (x0, y0, x1, y1), SHAPE_NAMES[kind]
            drawn_kinds.add(kind)
    assert drawn_kinds == set(range(num_attributes))


def test_objects_stay_apart_and_large_enough_when_many_are_drawn():
    _, targets, boxes = generate_multishapes_split(40, 10, 10, "test", image_size=96)
    assert targets.sum(1).max() >= 7
    _assert_objects_apart(targets, boxes)
    present = boxes[targets.bool()]
    assert ((present[:, 2:] - present[:, :2]) >= MIN_OBJECT_PIXELS).all()


def test_the_flip_moves_every_box_with_its_object_and_keeps_absent_ones_nan():
    module = MultiShapesDataModule(train_size=16, val_size=8, test_size=8, hflip=True)
    images, targets, boxes = generate_multishapes_split(4, 5, 3, "train")
    torch.manual_seed(0)
    flips = 0
    for image_u8, target, box in zip(images, targets, boxes):
        image = image_u8.float() / 255
        for _ in range(6):
            out, out_boxes = module._train_transform(image, box.clone())
            shown = module.denormalize(out[None])[0]
            assert torch.equal(out_boxes.isnan(), box.isnan())
            if torch.allclose(shown, image, atol=1e-5):
                torch.testing.assert_close(out_boxes, box, equal_nan=True)
                continue
            flips += 1
            torch.testing.assert_close(shown, image.flip(-1), atol=1e-5, rtol=0)
            present = target.bool()
            expected = box.clone()
            expected[present, 0], expected[present, 2] = 48 - box[present, 2], 48 - box[present, 0]
            torch.testing.assert_close(out_boxes, expected, equal_nan=True)
            # the flipped box still holds its object: the object's colour fills the same share of it
            for kind in present.nonzero().flatten().tolist():
                before = _object_pixels(image_u8.permute(1, 2, 0).numpy(), box[kind].numpy())[1]
                flipped_u8 = (shown * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                after = _object_pixels(flipped_u8, out_boxes[kind].numpy())[1]
                assert np.array_equal(after, before[:, ::-1])
    assert 0 < flips < 24


def test_datamodule_loaders_give_images_targets_and_boxes():
    module = MultiShapesDataModule(train_size=40, val_size=20, test_size=20, batch_size=8)
    assert module.task == "multilabel" and module.num_classes == 5
    assert module.classes == list(SHAPE_NAMES[:5]) and module.discover_classes() == module.classes
    module.setup()
    for loader in (module.train_dataloader(), module.val_dataloader(), module.test_dataloader()):
        images, targets, boxes = next(iter(loader))
        assert images.shape == (8, 3, 48, 48) and targets.shape == (8, 5) and boxes.shape == (8, 5, 4)
        assert targets.dtype == torch.float32 and torch.equal(boxes[..., 0].isnan(), targets == 0)
    assert images.min() < -1.0 and images.max() > 1.0  # normalised, not [0, 1]
    assert len(module.train_dataloader()) == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_attributes": 1}, "2 to 10 attributes"),
        ({"num_attributes": 11}, "2 to 10 attributes"),
        ({"max_objects": 0}, "max_objects must be between 1 and num_attributes=5"),
        ({"max_objects": 6}, "max_objects must be between 1 and num_attributes=5"),
        ({"in_chans": 1}, "3 channels"),
        ({"image_size": 32}, "image_size=32 is too small for the objects.*at least 38"),
        ({"num_attributes": 10, "max_objects": 10, "image_size": 48}, "too small.*at least 70"),
        ({"num_classes": 4}, "num_attributes=5 but data.num_classes=4; set data.num_classes=null"),
        ({"train_size": 0}, "train_size must be at least 1"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiShapesDataModule(**kwargs)


def test_a_configured_class_count_that_agrees_is_accepted():
    assert MultiShapesDataModule(num_classes=7, num_attributes=7).num_classes == 7


def test_one_batch_of_multilabel_abn_training_through_hydra(tmp_path: Path):
    from abn.train import train

    cfg = compose_train_config(tmp_path, [
        "data=multishapes", "model.head=abn", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1", "trainer.max_epochs=1", "data.train_size=64", "data.val_size=32",
        "data.test_size=32", "logger=none", "callbacks=none",
    ])
    GlobalHydra.instance().clear()
    metrics = train(cfg)
    assert {"val/acc", "test/acc"} <= set(metrics)
    assert all(0.0 <= metrics[name] <= 1.0 for name in ("val/acc", "test/acc"))
