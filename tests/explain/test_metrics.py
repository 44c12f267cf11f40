"""Explanation metrics on hand-made maps, boxes and toy models with answers worked out by hand."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn
from torchmetrics.utilities.data import dim_zero_sum

from abn.explain.metrics import (
    AverageDropIncrease,
    DeletionAUC,
    EnergyPointingGame,
    InsertionAUC,
    LocalizationError,
    PointingGame,
    blurred,
    box_from_map,
)


def peaked_map(size: int, row: int, col: int) -> Tensor:
    """A 1×size×size map of zeros with a single 1 at (row, col)."""
    single = torch.zeros(1, size, size)
    single[0, row, col] = 1.0
    return single


def box_mask(size: int, box: tuple[int, int, int, int]) -> Tensor:
    """A size×size float mask of the box (x0, y0, x1, y1), x1/y1 exclusive."""
    x0, y0, x1, y1 = box
    mask = torch.zeros(size, size)
    mask[y0:y1, x0:x1] = 1.0
    return mask


class RegionProbability(nn.Module):
    """Toy classifier whose class-0 probability is exactly the mean of the image over a region (clipped).

    Logits are (log p, log(1 - p)), so softmax gives p for class 0 and 1 - p for class 1.
    """

    def __init__(self, region: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.region = region
        self.dropout = nn.Dropout(0.0)  # a submodule whose mode the metric must leave alone

    def forward(self, images: Tensor) -> Tensor:
        x0, y0, x1, y1 = self.region
        p = images[:, :, y0:y1, x0:x1].mean(dim=(1, 2, 3)).clamp(1e-7, 1 - 1e-7)
        return torch.stack([p.log(), (1 - p).log()], dim=1)


class LogitsOnly(NamedTuple):
    logits: Tensor


class WithLogits(nn.Module):
    """Wraps a model so that it returns an object with ``.logits`` (like ABNOutput)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: Tensor) -> LogitsOnly:
        return LogitsOnly(self.inner(images))


REGION = (0, 0, 2, 2)  # the top-left 2×2 pixels of a 4×4 image


def region_image() -> Tensor:
    """1×1×4×4 image: 0.8 inside REGION, 0.3 elsewhere (so the toy model gives p = 0.8)."""
    image = torch.full((1, 1, 4, 4), 0.3)
    image[..., 0:2, 0:2] = 0.8
    return image


# ----------------------------------------------------------------------------------------------------------------
# Pointing game


def test_pointing_game_hits_inside_and_misses_far_away():
    metric = PointingGame()
    box = torch.tensor([[40, 40, 100, 100]])
    metric.update(peaked_map(224, 50, 60), box)
    assert metric.compute().item() == 1.0
    metric.update(peaked_map(224, 200, 200), box)
    assert metric.compute().item() == pytest.approx(0.5)


def test_pointing_game_tolerance_at_224_pixels():
    box = torch.tensor([[40, 40, 100, 100]])  # last column 99
    near, far = PointingGame(), PointingGame()
    near.update(peaked_map(224, 50, 110), box)  # 11 px right of the box
    far.update(peaked_map(224, 50, 115), box)  # 16 px right of the box
    assert near.compute().item() == 1.0
    assert far.compute().item() == 0.0
    assert near.tolerance_px == pytest.approx(15.0)


def test_pointing_game_tolerance_scales_with_image_size():
    assert PointingGame.tolerance_for_size(32, 32) == pytest.approx(15 * 32 / 224)
    assert PointingGame.tolerance_for_size(64, 48, tolerance=10.0, reference_size=100) == pytest.approx(4.8)
    box = torch.tensor([[10, 10, 20, 20]])  # last column 19
    metric = PointingGame()
    assert metric.tolerance_px is None
    metric.update(peaked_map(32, 15, 21), box)  # 2 px away: within 2.14
    assert metric.tolerance_px == pytest.approx(15 * 32 / 224)
    assert metric.compute().item() == 1.0
    metric.update(peaked_map(32, 15, 22), box)  # 3 px away
    assert metric.compute().item() == pytest.approx(0.5)
    metric.update(peaked_map(32, 21, 21), box)  # diagonal: sqrt(2² + 2²) = 2.83 > 2.14
    assert metric.compute().item() == pytest.approx(1 / 3)


def test_pointing_game_box_end_is_exclusive():
    box = torch.tensor([[10, 10, 20, 20]])
    inside, outside = PointingGame(tolerance=0.0), PointingGame(tolerance=0.0)
    inside.update(peaked_map(32, 19, 19), box)
    outside.update(peaked_map(32, 15, 20), box)
    assert inside.compute().item() == 1.0
    assert outside.compute().item() == 0.0


def test_pointing_game_takes_first_maximum_in_row_major_order():
    box = torch.tensor([[0, 0, 4, 4]])
    first_inside = peaked_map(32, 1, 1) + peaked_map(32, 30, 30)
    first_outside = peaked_map(32, 0, 30) + peaked_map(32, 1, 1)
    metric_inside, metric_outside = PointingGame(tolerance=0.0), PointingGame(tolerance=0.0)
    metric_inside.update(first_inside, box)
    metric_outside.update(first_outside, box)
    assert metric_inside.compute().item() == 1.0
    assert metric_outside.compute().item() == 0.0


def test_pointing_game_constant_and_zero_maps_miss():
    metric = PointingGame(tolerance=1000.0)
    boxes = torch.tensor([[0, 0, 32, 32], [0, 0, 32, 32]])
    metric.update(torch.stack([torch.zeros(32, 32), torch.full((32, 32), 0.7)]), boxes)
    assert metric.compute().item() == 0.0


def test_pointing_game_resizes_small_maps_to_the_image():
    low_res = torch.zeros(1, 1, 4, 4)  # B×1×h×w as the attention branch gives it
    low_res[..., 0, 0] = 1.0
    top_left, bottom_right = PointingGame(tolerance=0.0), PointingGame(tolerance=0.0)
    top_left.update(low_res, torch.tensor([[0, 0, 8, 8]]), image_size=(32, 32))
    bottom_right.update(low_res, torch.tensor([[24, 24, 32, 32]]), image_size=(32, 32))
    assert top_left.compute().item() == 1.0
    assert bottom_right.compute().item() == 0.0
    assert top_left.tolerance_px == 0.0


# ----------------------------------------------------------------------------------------------------------------
# Energy-based pointing game


def test_energy_of_box_mask_is_one():
    box = (3, 5, 11, 9)
    metric = EnergyPointingGame()
    metric.update(box_mask(16, box)[None], torch.tensor([box]))
    assert metric.compute().item() == 1.0


def test_energy_half_inside_half_outside():
    box = (0, 0, 8, 16)  # left half of a 16×16 image
    metric = EnergyPointingGame()
    metric.update(torch.full((1, 16, 16), 0.4), torch.tensor([box]))
    assert metric.compute().item() == pytest.approx(0.5)


def test_energy_zero_map_scores_zero_and_negative_values_are_clamped():
    box = (0, 0, 8, 8)
    signed = box_mask(16, box) * 2 - 1  # +1 inside the box, -1 outside
    metric = EnergyPointingGame()
    metric.update(torch.stack([torch.zeros(16, 16), signed]), torch.tensor([box, box]))
    value = metric.compute()
    assert not torch.isnan(value)
    assert value.item() == pytest.approx(0.5)  # mean of 0 (zero map) and 1 (clamped map)


# ----------------------------------------------------------------------------------------------------------------
# Localisation error and box_from_map


def test_box_from_map_on_a_known_blob_and_threshold():
    heat = torch.zeros(16, 16)
    heat[2:8, 4:10] = 0.1  # a faint halo, below 15 % of the peak
    heat[3:7, 5:10] = 1.0
    assert box_from_map(heat, 0.15).tolist() == [5, 3, 10, 7]
    assert box_from_map(heat, 0.05).tolist() == [4, 2, 10, 8]


def test_box_from_map_uses_eight_connectivity_and_largest_component():
    heat = torch.zeros(16, 16)
    heat[0:2, 0:2] = 1.0
    heat[2:4, 2:4] = 1.0  # touches the first square only at a corner
    heat[10:16, 10:12] = 1.0  # 12 pixels, more than the diagonal pair's 8
    assert box_from_map(heat, 0.5).tolist() == [10, 10, 12, 16]
    heat[10:16, 10:12] = 0.0
    heat[12:14, 12:14] = 1.0  # 4 pixels: the diagonal pair (8) is now the largest
    assert box_from_map(heat, 0.5).tolist() == [0, 0, 4, 4]


def test_box_from_map_of_constant_or_zero_map_is_the_whole_image():
    assert box_from_map(torch.zeros(8, 12)).tolist() == [0, 0, 12, 8]
    assert box_from_map(torch.full((8, 12), 0.3)).tolist() == [0, 0, 12, 8]


def test_localization_error_right_box_right_class_is_zero():
    box = (4, 6, 12, 14)
    metric = LocalizationError()
    metric.update(box_mask(16, box)[None], torch.tensor([box]), torch.tensor([3]), torch.tensor([3]))
    assert metric.compute().item() == 0.0


def test_localization_error_right_box_wrong_class_is_one():
    box = (4, 6, 12, 14)
    metric = LocalizationError()
    metric.update(box_mask(16, box)[None], torch.tensor([box]), torch.tensor([2]), torch.tensor([3]))
    assert metric.compute().item() == 1.0


def test_localization_error_uses_the_largest_blob():
    box = (0, 0, 8, 8)
    on_box = box_mask(32, box) + box_mask(32, (28, 28, 30, 30))  # large blob on the box, small one elsewhere
    off_box = box_mask(32, (0, 0, 2, 2)) + box_mask(32, (16, 16, 32, 32))  # the large blob is elsewhere
    metric = LocalizationError()
    metric.update(torch.stack([on_box, off_box]), torch.tensor([box, box]), torch.tensor([1, 1]), torch.tensor([1, 1]))
    assert metric.compute().item() == pytest.approx(0.5)


def test_localization_error_iou_threshold_is_inclusive_and_preds_may_be_scores():
    truth = (0, 0, 4, 4)
    half = box_mask(16, (0, 0, 4, 2))  # IoU with the truth: 8 / 16 = 0.5 exactly
    scores = torch.tensor([[0.1, 0.9]])  # argmax = class 1
    at_half, stricter = LocalizationError(iou=0.5), LocalizationError(iou=0.6)
    at_half.update(half[None], torch.tensor([truth]), scores, torch.tensor([1]))
    stricter.update(half[None], torch.tensor([truth]), scores, torch.tensor([1]))
    assert at_half.compute().item() == 0.0
    assert stricter.compute().item() == 1.0


def test_localization_error_zero_map_gives_whole_image_box():
    metric = LocalizationError()
    metric.update(torch.zeros(2, 16, 16), torch.tensor([[0, 0, 16, 16], [0, 0, 4, 4]]), torch.tensor([0, 0]),
                  torch.tensor([0, 0]))
    value = metric.compute()
    assert not torch.isnan(value)
    assert value.item() == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------------------------
# Deletion and insertion


def perfect_and_inverted_maps() -> Tensor:
    perfect = box_mask(4, REGION)
    return torch.stack([perfect, 1 - perfect])


def test_deletion_known_curves_and_areas():
    model = RegionProbability(REGION)
    images = region_image().expand(2, -1, -1, -1)
    metric = DeletionAUC(steps=4, baseline=0.0)
    curves = metric.probability_curves(model, images, perfect_and_inverted_maps(), torch.tensor([0, 0]))
    # Perfect map: the 4 region pixels go in step 1. Inverted: the 12 others go first, the region last.
    assert torch.allclose(curves[0], torch.tensor([0.8, 0.0, 0.0, 0.0, 0.0]), atol=1e-5)
    assert torch.allclose(curves[1], torch.tensor([0.8, 0.8, 0.8, 0.8, 0.0]), atol=1e-5)
    metric.update(model, images[:1], perfect_and_inverted_maps()[:1], torch.tensor([0]))
    assert metric.compute().item() == pytest.approx(0.1, abs=1e-5)  # 0.25 · 0.8 / 2
    inverted = DeletionAUC(steps=4, baseline=0.0)
    inverted.update(model, images[:1], perfect_and_inverted_maps()[1:], torch.tensor([0]))
    assert inverted.compute().item() == pytest.approx(0.7, abs=1e-5)  # 0.25 · (0.4 + 0.8 + 0.8 + 0.8)
    assert metric.compute() < inverted.compute()


def test_insertion_from_zeros_known_areas():
    model = RegionProbability(REGION)
    perfect, inverted = InsertionAUC(steps=4, baseline=0.0), InsertionAUC(steps=4, baseline=0.0)
    maps = perfect_and_inverted_maps()
    perfect.update(model, region_image(), maps[:1], torch.tensor([0]))
    inverted.update(model, region_image(), maps[1:], torch.tensor([0]))
    assert perfect.compute().item() == pytest.approx(0.7, abs=1e-5)  # curve 0, .8, .8, .8, .8
    assert inverted.compute().item() == pytest.approx(0.1, abs=1e-5)  # curve 0, 0, 0, 0, .8
    assert torch.allclose(perfect.mean_curve(), torch.tensor([0.0, 0.8, 0.8, 0.8, 0.8]), atol=1e-5)


def test_insertion_from_blur_prefers_the_right_map():
    region = (4, 4, 12, 12)
    image = box_mask(16, region)[None, None].repeat(1, 3, 1, 1)
    model = RegionProbability(region)
    perfect_map = box_mask(16, region)[None]
    perfect, inverted = InsertionAUC(steps=8), InsertionAUC(steps=8)
    perfect.update(model, image, perfect_map, torch.tensor([0]))
    inverted.update(model, image, 1 - perfect_map, torch.tensor([0]))
    assert perfect.compute() > inverted.compute() + 0.2
    # The start is the blurred image: the region's mean drops below 1 once the mass is spread out.
    assert perfect.mean_curve()[0] < 0.9


def test_deletion_ties_go_in_row_major_order():
    model = RegionProbability(REGION)
    metric = DeletionAUC(steps=4)
    curve = metric.probability_curves(model, region_image(), torch.ones(1, 4, 4), torch.tensor([0]))[0]
    # Step 1 removes row 0 (half the region), step 2 row 1 (the rest).
    assert torch.allclose(curve, torch.tensor([0.8, 0.4, 0.0, 0.0, 0.0]), atol=1e-5)


def test_deletion_resizes_maps_and_accepts_logits_objects_and_chunks():
    model = RegionProbability(REGION)
    low_res = torch.zeros(1, 2, 2)
    low_res[0, 0, 0] = 1.0  # the top-left quarter of the image, i.e. the region, is brightest
    plain, wrapped = DeletionAUC(steps=4, batch_size=2), DeletionAUC(steps=4, batch_size=3)
    plain.update(model, region_image(), low_res, torch.tensor([0]))
    wrapped.update(WithLogits(model), region_image(), low_res, torch.tensor([0]))
    assert plain.compute().item() == pytest.approx(0.1, abs=1e-5)
    assert wrapped.compute().item() == pytest.approx(plain.compute().item())


@pytest.mark.parametrize("metric_class", [DeletionAUC, InsertionAUC])
def test_perturbation_metrics_leave_the_model_mode_and_gradients_alone(metric_class):
    from abn.models import create_model

    model = create_model("resnet20", head="abn", num_classes=10, in_chans=3)
    images = torch.randn(2, 3, 32, 32)
    for training in (True, False):
        model.train(training)
        metric = metric_class(steps=2, batch_size=4)
        metric.update(model, images, torch.rand(2, 32, 32), torch.tensor([1, 2]))
        assert model.training is training
        assert 0.0 <= metric.compute().item() <= 1.0
    assert all(parameter.grad is None for parameter in model.parameters())


def test_blurred_smooths_but_keeps_shape_and_tiny_images_work():
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16, 16] = 1.0
    smooth = blurred(image)
    assert smooth.shape == image.shape
    assert smooth.max() < 0.05
    assert torch.equal(blurred(torch.ones(1, 1, 1, 1)), torch.ones(1, 1, 1, 1))


# ----------------------------------------------------------------------------------------------------------------
# Average drop / increase in confidence


def test_average_drop_with_map_of_ones_is_zero():
    metric = AverageDropIncrease()
    metric.update(RegionProbability(REGION), region_image(), torch.ones(1, 4, 4), torch.tensor([0]))
    assert metric.compute()["average_drop"].item() == 0.0
    assert metric.compute()["increase_in_confidence"].item() == 0.0


def test_average_drop_and_increase_hand_computed():
    model = RegionProbability(REGION)
    images = region_image().expand(2, -1, -1, -1)
    # Halving the image: class 0 goes 0.8 → 0.4 (drop 0.5), class 1 goes 0.2 → 0.6 (an increase, drop 0).
    maps = torch.full((2, 4, 4), 0.5)
    metric = AverageDropIncrease(batch_size=1)
    metric.update(model, images, maps, torch.tensor([0, 1]))
    scores = metric.compute()
    assert scores["average_drop"].item() == pytest.approx(0.25, abs=1e-5)
    assert scores["increase_in_confidence"].item() == pytest.approx(0.5)


def test_average_drop_clamps_maps_to_unit_range():
    model = RegionProbability(REGION)
    metric = AverageDropIncrease()
    metric.update(model, region_image().expand(2, -1, -1, -1), torch.stack([torch.full((4, 4), 3.0),
                  torch.full((4, 4), -1.0)]), torch.tensor([0, 0]))
    # Map 3 → 1: no change. Map -1 → 0: the image goes black, p → ~0, drop → 1.
    assert metric.compute()["average_drop"].item() == pytest.approx(0.5, abs=1e-5)
    assert metric.compute()["increase_in_confidence"].item() == 0.0


# ----------------------------------------------------------------------------------------------------------------
# Every metric: sum states, merge like DDP, no NaN for constant or all-zero maps


def metric_cases():
    """(name, factory, list of per-sample update arguments) for every metric."""
    model = RegionProbability(REGION)
    heat = [box_mask(4, REGION), torch.rand(4, 4), torch.zeros(4, 4), torch.full((4, 4), 0.5)]
    boxes = [REGION, (1, 1, 3, 4), (0, 0, 4, 4), (2, 2, 4, 4)]
    image = region_image()

    def located(i):
        return (heat[i][None], torch.tensor([boxes[i]]))

    def with_model(i):
        return (model, image, heat[i][None], torch.tensor([i % 2]))

    def localised(i):
        return (*located(i), torch.tensor([i % 2]), torch.tensor([0]))

    return [
        ("pointing", lambda: PointingGame(tolerance=0.0), located),
        ("energy", EnergyPointingGame, located),
        ("localisation", LocalizationError, localised),
        ("deletion", lambda: DeletionAUC(steps=4), with_model),
        ("insertion", lambda: InsertionAUC(steps=4), with_model),
        ("drop", AverageDropIncrease, with_model),
    ]


def as_floats(value) -> list[float]:
    if isinstance(value, dict):
        return [value[key].item() for key in sorted(value)]
    return [value.item()]


@pytest.mark.parametrize("name, factory, arguments", metric_cases(), ids=[case[0] for case in metric_cases()])
def test_merged_halves_equal_one_pass(name, factory, arguments):
    everything, first_half, second_half = factory(), factory(), factory()
    for i in range(4):
        everything.update(*arguments(i))
        (first_half if i < 2 else second_half).update(*arguments(i))
    first_half.merge_state(second_half)
    merged, single = as_floats(first_half.compute()), as_floats(everything.compute())
    assert merged == pytest.approx(single, abs=1e-6)
    assert all(not math.isnan(value) and 0.0 <= value <= 1.0 for value in single)


@pytest.mark.parametrize("name, factory, arguments", metric_cases(), ids=[case[0] for case in metric_cases()])
def test_states_are_sums_and_flags_are_set(name, factory, arguments):
    metric = factory()
    assert metric._reductions and all(reduce is dim_zero_sum for reduce in metric._reductions.values())
    assert metric.full_state_update is False


def test_higher_is_better_points_the_right_way():
    assert PointingGame.higher_is_better and EnergyPointingGame.higher_is_better and InsertionAUC.higher_is_better
    assert LocalizationError.higher_is_better is False and DeletionAUC.higher_is_better is False
    assert AverageDropIncrease.higher_is_better_by_key == {"average_drop": False, "increase_in_confidence": True}


@pytest.mark.parametrize("name, factory, arguments", metric_cases(), ids=[case[0] for case in metric_cases()])
def test_no_nan_for_constant_or_zero_maps(name, factory, arguments):
    model = RegionProbability(REGION)
    zero_and_constant = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 0.5)])
    boxes = torch.tensor([REGION, REGION])
    targets = torch.tensor([0, 1])
    metric = factory()
    if name in ("pointing", "energy"):
        metric.update(zero_and_constant, boxes)
    elif name == "localisation":
        metric.update(zero_and_constant, boxes, targets, targets)
    else:
        metric.update(model, region_image().expand(2, -1, -1, -1), zero_and_constant, targets)
    assert all(not math.isnan(value) for value in as_floats(metric.compute()))


def test_compute_before_update_is_not_nan():
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert PointingGame().compute().item() == 0.0


# ----------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_raise_value_errors_naming_the_problem():
    with pytest.raises(ValueError, match="empty"):
        PointingGame().update(torch.zeros(1, 8, 8), torch.tensor([[4, 0, 4, 8]]))
    with pytest.raises(ValueError, match="B×4"):
        EnergyPointingGame().update(torch.zeros(1, 8, 8), torch.tensor([0, 0, 4, 4]))
    with pytest.raises(ValueError, match="B×H×W"):
        EnergyPointingGame().update(torch.zeros(8, 8), torch.tensor([[0, 0, 4, 4]]))
    with pytest.raises(ValueError, match="one box per map"):
        PointingGame().update(torch.zeros(2, 8, 8), torch.tensor([[0, 0, 4, 4]]))
    with pytest.raises(ValueError, match="steps"):
        DeletionAUC(steps=0)
    with pytest.raises(ValueError, match="baseline"):
        InsertionAUC(baseline="noise")
    with pytest.raises(ValueError, match="one map per image"):
        AverageDropIncrease().update(RegionProbability(REGION), region_image(), torch.ones(2, 4, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match="one H×W map"):
        box_from_map(torch.zeros(1, 8, 8))
