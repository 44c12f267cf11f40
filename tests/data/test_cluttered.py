"""Cluttered Fashion-MNIST: tight boxes, garments on top of clutter, seeded samples, no clutter across splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from torch.utils.data import DataLoader
from torchvision import datasets

from abn.data.cluttered import ClutteredFashionMNISTDataModule, draw_cluttered
from abn.data.fashion_mnist import IDX_FILES, SYSTEM_COPIES, raw_folder
from abn.data.standins import write_idx
from abn.train import train

from ..conftest import compose_train_config

TRAIN_IMAGES, TEST_IMAGES = 60, 20


def level_of_train_image(k: int) -> int:
    """The one grey level of training image ``k``: every image of the fixture has its own."""
    return 30 + 2 * k


def level_of_test_image(k: int) -> int:
    return 160 + 4 * k


def write_garments(directory: Path) -> Path:
    """Tiny Fashion-MNIST files whose "garments" are flat rectangles with black margins, one grey level per image:
    a pixel of a clutter patch (never resized) tells which image it was cut from."""
    directory.mkdir(parents=True, exist_ok=True)
    splits = (("train", TRAIN_IMAGES, level_of_train_image), ("t10k", TEST_IMAGES, level_of_test_image))
    for prefix, count, value in splits:
        labels = np.arange(count) % 10
        images = np.zeros((count, 28, 28), dtype=np.uint8)
        for k, label in enumerate(labels):
            images[k, 4 + label : 14 + label, 9 : 17 + k % 3] = value(k)
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels)
    return directory


@pytest.fixture(scope="module")
def garments(tmp_path_factory) -> Path:
    return write_garments(tmp_path_factory.mktemp("garments") / "fashion-mnist")


def make_module(root: Path, search_dir: Path, **options) -> ClutteredFashionMNISTDataModule:
    settings = dict(root=str(root), search_dirs=[str(search_dir)], download=False, val_size=10, num_workers=0,
                    batch_size=8)
    module = ClutteredFashionMNISTDataModule(**{**settings, **options})
    module.setup()
    return module


def outside(canvas: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The canvas' pixels outside ``box``."""
    mask = np.ones(canvas.shape, dtype=bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = False
    return canvas[mask]


def flat(image: torch.Tensor, label: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """A whole sample as one float vector, to compare samples in one go."""
    return torch.cat([image.flatten(), label.view(1).float(), box.float()])


def test_batches_are_images_labels_and_boxes_inside_the_canvas(tmp_path, fashion_mnist_system_copy):
    module = make_module(tmp_path, fashion_mnist_system_copy, canvas_size=48, min_scale=16, max_scale=30)
    assert (len(module.train_set), len(module.val_set), len(module.test_set)) == (110, 10, 40)
    assert module.classes == list(datasets.FashionMNIST.classes)
    images, labels, boxes = next(iter(module.train_dataloader()))
    assert images.shape == (8, 1, 48, 48) and images.dtype == torch.float32
    assert labels.shape == (8,) and labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() <= 9
    assert boxes.shape == (8, 4) and boxes.dtype == torch.int64
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 48).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    # the fixture's garments have no black margin, so the box is the whole pasted square: 16 to 30 px a side
    sides = boxes[:, 2:] - boxes[:, :2]
    assert torch.equal(sides[:, 0], sides[:, 1]) and (sides >= 16).all() and (sides <= 30).all()


def test_three_channels_repeat_the_grey_image(tmp_path, fashion_mnist_system_copy):
    module = make_module(tmp_path, fashion_mnist_system_copy, in_chans=3)
    image, _, _ = module.test_set[0]
    assert image.shape == (3, 64, 64) and torch.equal(image[0], image[2])
    assert module.mean == (module.mean[0],) * 3


def test_without_clutter_the_box_is_tight_around_the_garment(tmp_path, garments):
    module = make_module(tmp_path, garments, clutter=0, min_scale=20, max_scale=36)
    for index in range(len(module.val_set)):
        canvas, _, box = module.val_set.draw(index)
        x0, y0, x1, y1 = box
        assert not outside(canvas, box).any(), "a garment pixel lies outside its box"
        for border in (canvas[y0, x0:x1], canvas[y1 - 1, x0:x1], canvas[y0:y1, x0], canvas[y0:y1, x1 - 1]):
            assert border.any(), "a border of the box is empty: the box is not tight"
        # the black margins of the 28×28 image are not part of the box: at most 10×10 of 28 px, scaled ≤ 36/28
        assert x1 - x0 < 20 and y1 - y0 < 20


def test_the_garment_is_drawn_on_top_of_the_clutter():
    garment = np.zeros((28, 28), dtype=np.uint8)
    garment[6:22, 8:20] = 255
    dim_pieces = [np.full((28, 28), 50, dtype=np.uint8)] * 12  # a dozen patches: plenty of clutter
    for seed in range(10):
        canvas, box = draw_cluttered(np.random.default_rng(seed), garment, dim_pieces, canvas_size=40)
        x0, y0, x1, y1 = box
        brightest = canvas == 255
        assert brightest.any() and brightest[y0:y1, x0:x1].sum() == brightest.sum()
        # the garment's inside is intact and the clutter around it is still there
        assert (canvas[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] == 255).all()
        assert (outside(canvas, box) == 50).any()
    # clutter covering the whole canvas survives the garment's black margins: the two are combined by maximum
    canvas, box = draw_cluttered(np.random.default_rng(0), garment, dim_pieces[:1], canvas_size=28, min_scale=28,
                                 max_scale=28, min_clutter_size=28, max_clutter_size=28)
    assert box.tolist() == [8, 6, 20, 22] and (outside(canvas, box) == 50).all()


def test_same_seed_same_samples_other_seed_other_samples(tmp_path, garments):
    def samples(seed, split):
        module = make_module(tmp_path, garments, seed=seed, hflip=False)
        dataset = getattr(module, f"{split}_set")
        return [flat(*dataset[index]) for index in range(len(dataset))]

    for split in ("train", "val", "test"):
        first, again, other = samples(0, split), samples(0, split), samples(1, split)
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        assert not torch.equal(torch.stack(first), torch.stack(other))


def test_a_sample_does_not_depend_on_workers_or_order(tmp_path, garments):
    module = make_module(tmp_path, garments)
    loader = DataLoader(module.test_set, batch_size=6, num_workers=2)
    from_workers = [flat(*sample) for images, labels, boxes in loader for sample in zip(images, labels, boxes)]
    backwards = [flat(*module.test_set[index]) for index in reversed(range(len(module.test_set)))][::-1]
    assert len(from_workers) == len(backwards) == TEST_IMAGES
    assert all(torch.equal(a, b) for a, b in zip(from_workers, backwards))


def test_caps_take_a_seeded_choice_of_garments(tmp_path, garments):
    small = make_module(tmp_path, garments, train_size=12, test_size=5)
    assert (len(small.train_set), len(small.val_set), len(small.test_set)) == (12, 10, 5)
    # a larger cap adds samples and keeps the first ones as they were
    larger = make_module(tmp_path, garments, train_size=20, test_size=50)
    assert (len(larger.train_set), len(larger.test_set)) == (20, TEST_IMAGES)
    for index in range(5):
        assert np.array_equal(small.test_set.draw(index)[0], larger.test_set.draw(index)[0])
    assert len({small.train_set.draw(i)[1] for i in range(12)}) > 3  # a mix of classes, not one class in a row


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_clutter_is_cut_from_other_garments_of_the_same_split(tmp_path, garments, split):
    module = make_module(tmp_path, garments, clutter=6)
    dataset = getattr(module, f"{split}_set")
    value = level_of_test_image if split == "test" else level_of_train_image
    allowed = {value(int(k)) for k in dataset.pool}
    seen: set[int] = set()
    for index in range(len(dataset)):
        canvas, _, box = dataset.draw(index)
        levels = set(np.unique(outside(canvas, box)).tolist()) - {0}
        assert levels <= allowed, f"{split} sample {index} holds clutter from another split: {levels - allowed}"
        assert value(int(dataset.pool[index])) not in levels, "the garment itself was used as clutter"
        seen |= levels
    assert len(seen) > 3  # clutter is there, from several garments


def test_horizontal_flip_moves_the_box_with_the_garment(tmp_path, garments):
    module = make_module(tmp_path, garments, clutter=0, hflip=True)
    # a sample whose mirror image differs from it (a garment in the middle of the canvas would not show a flip)
    canvas, _, box = next(sample for sample in map(module.train_set.draw, range(len(module.train_set)))
                          if sample[2][0] + sample[2][2] != 64)
    image, box = torch.from_numpy(canvas).float().div(255)[None], torch.from_numpy(box)
    torch.manual_seed(0)
    flips = 0
    for _ in range(20):
        out, out_box = module._train_transform(image, box)
        if torch.equal(out_box, box):
            torch.testing.assert_close(module.denormalize(out[None])[0], image)
            continue
        flips += 1
        assert out_box.tolist() == [64 - box[2], box[1], 64 - box[0], box[3]]
        shown = module.denormalize(out[None])[0, 0].numpy()
        torch.testing.assert_close(torch.from_numpy(shown), image[0].flip(-1))
        assert not (outside(shown, out_box.numpy()) > 1e-3).any()
    assert 0 < flips < 20


def test_evaluation_samples_are_the_drawn_canvas_normalised_and_never_flipped(tmp_path, garments):
    module = make_module(tmp_path, garments, hflip=True)
    torch.manual_seed(0)
    for index in range(10):
        image, label, box = module.test_set[index]
        canvas, drawn_label, drawn_box = module.test_set.draw(index)
        assert label.item() == drawn_label and box.tolist() == drawn_box.tolist()
        torch.testing.assert_close(module.denormalize(image[None])[0, 0], torch.from_numpy(canvas).float() / 255)


def test_fast_dev_run_through_hydra(tmp_path, garments):
    cfg = compose_train_config(tmp_path, [
        "data=cluttered_fashion_mnist", f"paths.data_dir={tmp_path / 'data'}", f"+data.search_dirs=[{garments}]",
        "data.download=false", "data.val_size=10", "data.train_size=16", "data.num_workers=0", "data.batch_size=8",
        "model.arch=resnet20", "trainer=cpu", "trainer.fast_dev_run=true", "logger=none", "callbacks=none",
    ])
    assert cfg.data.canvas_size == 64 and cfg.data.clutter == 4
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    assert cfg.model.in_chans == 1 and cfg.model.num_classes == 10 and "test/acc" in metrics
    assert all((raw_folder(tmp_path / "data") / name).is_file() for name in IDX_FILES)


def test_missing_data_names_the_folder_and_the_package(tmp_path):
    module = ClutteredFashionMNISTDataModule(root=str(tmp_path), search_dirs=[str(tmp_path / "nowhere")],
                                             download=False)
    with pytest.raises(FileNotFoundError) as error:
        module.setup()
    message = str(error.value)
    assert str(raw_folder(tmp_path)) in message and "apt-get install dataset-fashion-mnist" in message


def test_validation_split_larger_than_train(tmp_path, garments):
    with pytest.raises(ValueError, match="leaves no training images"):
        make_module(tmp_path, garments, val_size=TRAIN_IMAGES)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"canvas_size": 32, "max_scale": 36}, "canvas_size=32 is smaller than max_scale=36"),
        ({"min_scale": 30, "max_scale": 24}, "min_scale=30 is larger than max_scale=24"),
        ({"clutter": -1}, "clutter must be ≥ 0"),
        ({"in_chans": 2}, "in_chans must be 1"),
        ({"num_classes": 5}, "set data.num_classes=10"),
        ({"min_clutter_size": 12, "max_clutter_size": 8}, "min_clutter_size ≤ max_clutter_size"),
        ({"train_size": 0}, "train_size must be at least 1"),
        ({"val_size": -1}, "val_size must be ≥ 0"),
        ({"seed": -3}, "seed must be ≥ 0"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClutteredFashionMNISTDataModule(**kwargs)


REAL_COPY = Path(SYSTEM_COPIES[0])


@pytest.mark.skipif(not REAL_COPY.is_dir(), reason=f"dataset-fashion-mnist ({REAL_COPY}) is not installed")
def test_real_garments_have_tight_boxes_and_the_recorded_statistics(tmp_path):
    module = make_module(tmp_path, REAL_COPY, val_size=500, train_size=400, test_size=100)
    assert (len(module.train_set), len(module.val_set), len(module.test_set)) == (400, 500, 100)
    pixels = np.stack([module.train_set.draw(i)[0] for i in range(400)]).astype(np.float64) / 255
    # the hard-coded statistics were measured on 5000 samples; 400 of them agree within 10 %
    assert abs(pixels.mean() - module.mean[0]) < 0.1 * module.mean[0]
    assert abs(pixels.std() - module.std[0]) < 0.1 * module.std[0]
    bare = make_module(tmp_path, REAL_COPY, val_size=500, test_size=50, clutter=0)
    for index in range(50):
        canvas, _, box = bare.test_set.draw(index)
        x0, y0, x1, y1 = box
        assert not outside(canvas, box).any() and canvas[y0, x0:x1].any() and canvas[y1 - 1, x0:x1].any()
