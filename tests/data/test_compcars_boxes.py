"""CompCars with ``car_boxes=true``: each car's labelled box handed over with its image, in the transformed image's
pixels, for attention supervision (tiny stand-in data in the real on-disk layout)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from abn.data.compcars import pixel_box
from abn.train import train

from ..conftest import compose_train_config
from .test_compcars import make_module, standin  # noqa: F401  (the fixture)

SOURCE_WIDTH = 64  # the stand-in images are 48×64 (height × width)


def label_box(root: Path, relative: str) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = map(int, (root / "label" / relative).with_suffix(".txt").read_text().split("\n")[2].split())
    return x1, y1, x2, y2


def moved(box: tuple[float, ...], scale_x: float, scale_y: float, left: float = 0, top: float = 0) -> torch.Tensor:
    x0, y0, x1, y1 = box
    return torch.tensor([x0 * scale_x + left, y0 * scale_y + top, x1 * scale_x + left, y1 * scale_y + top])


def mirrored(box: tuple[float, ...]) -> tuple[float, ...]:
    x0, y0, x1, y1 = box
    return SOURCE_WIDTH - x1, y0, SOURCE_WIDTH - x0, y1


def pixel_edges(root: Path, relative: str) -> tuple[float, ...]:
    """The label's box as 0-based pixel edges of the 48×64 source (x1/y1 exclusive)."""
    x1, y1, x2, y2 = label_box(root, relative)
    return x1 - 1, y1 - 1, x2, y2


def assert_red_inside(dm, image: torch.Tensor, box: torch.Tensor) -> None:
    """The painted red rectangle lies inside the box (up to the pixel that bilinear resizing blends), and fills it."""
    shown = dm.denormalize(image[None])[0]
    red = (shown[0] > 0.6) & (shown[2] < 0.4)
    rows, cols = red.nonzero(as_tuple=True)
    x0, y0, x1, y1 = box.tolist()
    assert len(rows) > 0
    assert cols.min() + 0.5 >= x0 - 1 and cols.max() + 0.5 <= x1 + 1
    assert rows.min() + 0.5 >= y0 - 1 and rows.max() + 0.5 <= y1 + 1
    assert red[int(y0) + 1 : int(y1) - 1, int(x0) + 1 : int(x1) - 1].all()


def test_without_the_option_batches_stay_images_and_labels(standin):
    root, _ = standin
    dm = make_module(root)
    dm.setup()
    assert dm.supervision is None and dm.supervised_fraction == 1.0
    for loader in (dm.train_dataloader(), dm.test_dataloader()):
        assert len(next(iter(loader))) == 2


def test_the_box_follows_the_letterbox(standin):
    root, listed = standin  # 48×64 into 32×32: scale 0.5, 24 rows with 4 black ones above and below
    dm = make_module(root, car_boxes=True, image_size=[32, 32])
    dm.setup()
    assert dm.supervision == "boxes"
    images, labels, boxes = next(iter(dm.test_dataloader()))
    assert boxes.shape == (4, 4) and boxes.dtype == torch.float32 and labels.shape == (4,)
    for image, box, relative in zip(images, boxes, listed["test"]):
        torch.testing.assert_close(box, moved(pixel_edges(root, relative), 0.5, 0.5, top=4))
        assert_red_inside(dm, image, box)


def test_the_box_follows_a_stretching_resize(standin):
    root, listed = standin
    dm = make_module(root, car_boxes=True, image_size=[24, 40], keep_aspect=False)
    dm.setup()
    images, _, boxes = next(iter(dm.test_dataloader()))
    assert images.shape[-2:] == (24, 40)
    for image, box, relative in zip(images, boxes, listed["test"]):
        torch.testing.assert_close(box, moved(pixel_edges(root, relative), 40 / 64, 24 / 48))
        assert_red_inside(dm, image, box)


def test_the_box_follows_a_flip_before_an_uneven_letterbox(standin):
    # 48×64 into 32×80: resized to 32×43, then 18 black columns on the left and 19 on the right, so a box mirrored
    # after the letterbox would sit one pixel off the one mirrored with the image before it
    root, listed = standin
    dm = make_module(root, car_boxes=True, image_size=[32, 80])
    dm.setup()
    edges = pixel_edges(root, listed["train"][0])
    kept, flipped = moved(edges, 43 / 64, 32 / 48, left=18), moved(mirrored(edges), 43 / 64, 32 / 48, left=18)
    torch.manual_seed(0)
    seen = set()
    for _ in range(16):
        image, _, box = dm.train_set[0]
        is_flipped = torch.allclose(box, flipped)
        assert is_flipped or torch.allclose(box, kept)
        assert_red_inside(dm, image, box)
        seen.add(is_flipped)
    assert seen == {True, False}


def test_a_box_past_the_edges_is_clamped_and_one_outside_the_image_is_nan(standin):
    root, listed = standin
    (root / "label" / listed["test"][0]).with_suffix(".txt").write_text("3\n1\n-5 0 999 999\n")
    (root / "label" / listed["test"][1]).with_suffix(".txt").write_text("3\n1\n70 50 80 60\n")
    dm = make_module(root, car_boxes=True, image_size=[32, 32])
    dm.setup()
    _, _, boxes = next(iter(dm.test_dataloader()))
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 4.0, 32.0, 28.0]))  # the whole letterboxed image
    assert boxes[1].isnan().all() and boxes[2:].isfinite().all()
    assert pixel_box((1, 1, 10, 5), 64, 48) == (0.0, 0.0, 10.0, 5.0)
    assert pixel_box((70, 50, 80, 60), 64, 48) is None


def test_an_image_without_a_label_file_keeps_a_nan_box_with_one_warning(standin):
    root, listed = standin
    for relative in listed["train"][:2]:
        (root / "label" / relative).with_suffix(".txt").unlink()
    dm = make_module(root, car_boxes=True, hflip=False)
    with pytest.warns(UserWarning, match=r"2 of 12 train images .* have no label file .* without attention") as caught:
        dm.setup()
    assert len([w for w in caught if "no label file" in str(w.message)]) == 1
    assert len(dm.train_set) == 12  # the images still train, without supervision
    boxes = torch.stack([dm.train_set[index][2] for index in range(len(dm.train_set))])
    assert boxes[:2].isnan().all() and boxes[2:].isfinite().all()


def test_a_malformed_label_file_is_named_with_the_option_to_change(standin):
    root, listed = standin
    label = (root / "label" / listed["train"][0]).with_suffix(".txt")
    label.write_text("3\n1\n")
    with pytest.raises(ValueError, match=f"{label}: expected three lines.*without a box.*data.car_boxes=false"):
        make_module(root, car_boxes=True).setup()


def test_the_label_folder_is_needed(standin):
    root, _ = standin
    (root / "label").rename(root / "moved")
    with pytest.raises(FileNotFoundError, match=f"{root / 'label'}"):
        make_module(root, car_boxes=True).setup()


@pytest.mark.parametrize(
    ("options", "message"),
    [({"car_boxes": True, "crop_to_box": True}, r"the crop is the car's box itself.*set data.crop_to_box=false"),
     ({"supervised_fraction": 0.5}, r"data.car_boxes=false hands over none; set data.car_boxes=true"),
     ({"car_boxes": True, "supervised_fraction": 0.0}, r"supervised_fraction must be in \(0, 1\]"),
     ({"car_boxes": True, "supervised_fraction": 1.5}, r"supervised_fraction must be in \(0, 1\]")],
)
def test_bad_box_options_are_named(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        make_module(tmp_path, **options)


def test_supervised_fraction_keeps_a_seeded_share_of_the_training_boxes_only(standin):
    root, _ = standin
    chosen = []
    for _ in range(2):
        dm = make_module(root, car_boxes=True, supervised_fraction=0.25, val_size=4, seed=1)
        dm.setup()
        training = dm.supervised_training_set()
        boxes = torch.stack([training[index][2] for index in range(len(training))])
        chosen.append(boxes[:, 0].isfinite().nonzero().flatten().tolist())
    assert len(chosen[0]) == 2 and chosen[0] == chosen[1]  # round(0.25 × 8), the same choice again
    assert all(dm.val_set[index][2].isfinite().all() for index in range(len(dm.val_set)))
    assert all(dm.test_set[index][2].isfinite().all() for index in range(len(dm.test_set)))


def test_the_config_leaves_boxes_off(tmp_path):
    cfg = compose_train_config(tmp_path, ["data=compcars"])
    GlobalHydra.instance().clear()
    assert cfg.data.car_boxes is False and cfg.data.supervised_fraction == 1.0


def test_a_supervised_fast_dev_run_through_hydra(standin, tmp_path):
    root, _ = standin
    overrides = [
        "data=compcars",
        f"data.root={root}",
        "data.car_boxes=true",
        "data.supervised_fraction=0.5",
        "data.image_size=[32,48]",
        "data.num_workers=0",
        "data.pin_memory=false",
        "data.batch_size=4",
        "model.arch=resnet20",
        "model.attention_supervision.loss=energy",
        "trainer=cpu",
        "trainer.fast_dev_run=true",
        "logger=none",
        "callbacks=none",
        f"paths.output_dir={tmp_path}",
    ]
    cfg = compose_train_config(tmp_path, overrides)
    try:
        metrics = train(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert 0.0 <= metrics["test/acc"] <= 1.0 and torch.isfinite(torch.tensor(metrics["train/loss"]))
