"""The embedded data set: deterministic, boxes around the object, colour says nothing, a CNN learns it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from abn.data import SHAPE_NAMES, ShapesDataModule, generate_split
from abn.data.shapes import draw_sample
from abn.models import create_model


def test_same_seed_same_images_other_seed_other_images():
    a = generate_split(20, 8, "train", seed=3)
    b = generate_split(20, 8, "train", seed=3)
    c = generate_split(20, 8, "train", seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], generate_split(20, 8, "test", seed=3)[0])  # splits differ


def test_labels_are_balanced_and_boxes_lie_in_the_image():
    images, labels, boxes = generate_split(80, 8, "val")
    assert images.shape == (80, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(torch.bincount(labels), torch.full((8,), 10))
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 32).all()
    sides = boxes[:, 2:] - boxes[:, :2]
    assert torch.equal(sides[:, 0], sides[:, 1]) and (sides >= 9).all() and (sides <= 16).all()


@pytest.mark.parametrize("label", range(len(SHAPE_NAMES)))
def test_the_object_is_drawn_inside_its_box(label):
    import numpy as np

    rng = np.random.default_rng(label)
    image, box = draw_sample(rng, label)
    x0, y0, x1, y1 = box.astype(int)
    inside = image[y0:y1, x0:x1].reshape(-1, 3)
    # the object's colour is the most frequent exact colour in the box (noise makes background pixels unique)
    colours, counts = np.unique(inside, axis=0, return_counts=True)
    object_colour = colours[counts.argmax()]
    assert counts.max() >= 0.2 * (x1 - x0) * (y1 - y0)
    everywhere = (image == object_colour).all(axis=-1).sum()
    assert everywhere == counts.max(), "the object's colour is found outside its box"


def _colour_histograms(images: torch.Tensor, bins: int = 4) -> torch.Tensor:
    """Joint RGB histogram (bins³) plus the same sorted: colour statistics and how much area each colour covers."""
    q = images.long() * bins // 256
    index = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    hist = F.one_hot(index.flatten(1), bins**3).float().mean(1)
    return torch.cat([hist, hist.sort(dim=1, descending=True).values], dim=1)


def _fit_linear(features, labels, num_classes):
    mean, std = features.mean(0), features.std(0) + 1e-6
    features = (features - mean) / std
    weight = torch.zeros(features.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight + bias, labels) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda x: ((x - mean) / std) @ weight + bias


def test_colour_histograms_stay_near_chance_while_a_cnn_learns_the_shapes():
    torch.manual_seed(0)
    classes = 4
    train_x, train_y, _ = generate_split(2400, classes, "train")
    test_x, test_y, _ = generate_split(800, classes, "test")

    predict = _fit_linear(_colour_histograms(train_x), train_y, classes)
    with torch.no_grad():
        histogram_acc = (predict(_colour_histograms(test_x)).argmax(1) == test_y).float().mean().item()

    model = create_model("resnet20", head="baseline", num_classes=classes)
    normalise = lambda x: (x.float() / 255 - 0.5) / 0.25  # noqa: E731
    epochs, batch = 4, 32
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * len(train_x) // batch)
    for _ in range(epochs):
        order = torch.randperm(len(train_x))
        for start in range(0, len(train_x) - batch + 1, batch):
            idx = order[start : start + batch]
            loss = F.cross_entropy(model(normalise(train_x[idx])).logits, train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        cnn_acc = (model(normalise(test_x)).logits.argmax(1) == test_y).float().mean().item()

    chance = 1 / classes
    assert histogram_acc < chance + 0.08, f"colour histograms reach {histogram_acc:.2f} (chance {chance:.2f})"
    assert cnn_acc > 0.9, f"the CNN reaches only {cnn_acc:.2f}"


def test_horizontal_flip_moves_the_box_with_the_object():
    module = ShapesDataModule(num_classes=8, train_size=16, val_size=8, test_size=8, hflip=True)
    image, box = torch.rand(3, 32, 32), torch.tensor([2.0, 5.0, 12.0, 15.0])
    torch.manual_seed(1)
    flips = 0
    for _ in range(20):
        out, out_box = module._train_transform(image, box)
        if not torch.equal(out_box, box):
            flips += 1
            torch.testing.assert_close(out_box, torch.tensor([20.0, 5.0, 30.0, 15.0]))
            torch.testing.assert_close(module.denormalize(out[None])[0], image.flip(-1))
    assert 0 < flips < 20


def test_datamodule_gives_normalised_triples():
    module = ShapesDataModule(num_classes=5, train_size=40, val_size=20, test_size=20, batch_size=8)
    module.setup()
    images, labels, boxes = next(iter(module.val_dataloader()))
    assert images.shape == (8, 3, 32, 32) and labels.shape == (8,) and boxes.shape == (8, 4)
    assert images.min() < -1.0 and images.max() > 1.0  # normalised, not [0, 1]
    assert module.classes == list(SHAPE_NAMES[:5])
    assert len(module.train_dataloader()) == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 11}, "2 to 10 classes"),
        ({"in_chans": 1}, "3 channels"),
        ({"train_size": 0}, "train_size must be at least 1"),
        ({"image_size": 8}, "at least 16"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesDataModule(**kwargs)
