"""Scores for explanation maps, as torchmetrics ``Metric`` classes (DESIGN.md §4), and :data:`METRIC_SPECS`, the
table from which ``abn-explain`` builds, feeds and summarises them: a new metric is its class and one table entry.

Conventions shared by every metric here:

- ``maps``: B×H×W (or B×1×H×W) non-negative float tensors. A map whose size differs from the images' is
  resized bilinearly (``align_corners=False``) to the images' H×W. Metrics that see no images take an
  ``image_size=(H, W)`` argument for that; without it the maps' own size is the image size.
- ``boxes``: B×4 tensors (x0, y0, x1, y1) in pixels with x1 and y1 exclusive: a box covers columns
  x0..x1-1 and rows y0..y1-1.
- ``images``: B×C×H×W normalised network inputs; ``targets``: B class indices. ``model`` returns logits
  (B×K) or an object with ``.logits`` (an ``ABNOutput``). The model is run under ``torch.no_grad()``, in
  chunks of ``batch_size`` images, exactly as it is: its train/eval mode is left alone (put it in eval mode).
  The metrics that run the model score the target's softmax probability (``score="softmax"``, single-label), or
  for a multi-label model the attribute's own probability σ(logit) (``score="sigmoid"``).
- Every score is a fraction in [0, 1] (not a percent). States are sums (``dist_reduce_fx="sum"``), so the
  scores are right under DDP and after ``merge_state``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn
from torchmetrics import Metric
from torchvision.transforms.functional import gaussian_blur

__all__ = [
    "PointingGame",
    "EnergyPointingGame",
    "OtherObjectsEnergy",
    "LocalizationError",
    "box_from_map",
    "blurred",
    "DeletionAUC",
    "InsertionAUC",
    "AverageDropIncrease",
    "Evidence",
    "MetricSpec",
    "METRIC_SPECS",
]

Baseline = Union[float, Tensor, str]
SCORES = ("softmax", "sigmoid")


# ----------------------------------------------------------------------------------------------------------------
# Input checks and small helpers


def _as_map_batch(maps: Tensor) -> Tensor:
    """Accept B×H×W or B×1×H×W; return B×H×W float."""
    if not isinstance(maps, Tensor):
        raise ValueError(f"maps must be a tensor of shape B×H×W, got {type(maps).__name__}")
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise ValueError(
            f"maps must have shape B×H×W (or B×1×H×W), got {tuple(maps.shape)}; "
            "stack one 2-D map per image along the first dimension"
        )
    return maps.detach().float()


def _resize_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of B×h×w maps to ``size`` (a no-op when the size already matches)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _image_size(maps: Tensor, image_size: Optional[tuple[int, int]]) -> tuple[int, int]:
    if image_size is None:
        return int(maps.shape[-2]), int(maps.shape[-1])
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"image_size must be (height, width) with both ≥ 1, got {image_size}")
    return int(image_size[0]), int(image_size[1])


def _check_boxes(boxes: Tensor, batch: int) -> Tensor:
    """B×4 (x0, y0, x1, y1), x1 > x0 and y1 > y0; returned as float on the boxes' device."""
    boxes = torch.as_tensor(boxes)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape B×4 (x0, y0, x1, y1), got {tuple(boxes.shape)}")
    if boxes.shape[0] != batch:
        raise ValueError(f"got {boxes.shape[0]} boxes for {batch} maps; pass one box per map")
    boxes = boxes.float()
    empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if empty.any():
        raise ValueError(
            f"boxes {boxes[empty].tolist()} are empty; boxes are (x0, y0, x1, y1) with x1 > x0 and y1 > y0 "
            "(x1, y1 exclusive)"
        )
    return boxes


def _box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """B×H×W bool masks: rows y0:y1, columns x0:x1 of each box (clipped to the image)."""
    rows = torch.arange(height, device=boxes.device, dtype=boxes.dtype)
    cols = torch.arange(width, device=boxes.device, dtype=boxes.dtype)
    x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))
    inside_rows = (rows >= y0) & (rows < y1)  # B×H
    inside_cols = (cols >= x0) & (cols < x1)  # B×W
    return inside_rows[:, :, None] & inside_cols[:, None, :]


def _box_iou(first: Tensor, second: Tensor) -> Tensor:
    """Element-wise IoU of two B×4 box tensors in the exclusive convention (area = (x1-x0)·(y1-y0))."""
    width = (torch.minimum(first[:, 2], second[:, 2]) - torch.maximum(first[:, 0], second[:, 0])).clamp(min=0)
    height = (torch.minimum(first[:, 3], second[:, 3]) - torch.maximum(first[:, 1], second[:, 1])).clamp(min=0)
    intersection = width * height
    area_first = (first[:, 2] - first[:, 0]) * (first[:, 3] - first[:, 1])
    area_second = (second[:, 2] - second[:, 0]) * (second[:, 3] - second[:, 1])
    union = area_first + area_second - intersection
    return intersection / union.clamp(min=1e-12)


def _check_images(images: Tensor, maps: Tensor, targets: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must have shape B×C×H×W, got {shape}")
    if maps.shape[0] != images.shape[0]:
        raise ValueError(f"got {maps.shape[0]} maps for {images.shape[0]} images; pass one map per image")
    targets = torch.as_tensor(targets, device=images.device)
    if targets.shape != (images.shape[0],):
        raise ValueError(f"targets must be B class indices (shape ({images.shape[0]},)), got {tuple(targets.shape)}")
    return targets.long()


def _check_batch_size(batch_size: int) -> int:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    return int(batch_size)


def _logits_of(output: Any) -> Tensor:
    """Logits from a plain model's tensor or from an output with ``.logits`` (ABNOutput)."""
    return output.logits if hasattr(output, "logits") else output


def _check_score(score: str) -> str:
    if score not in SCORES:
        raise ValueError(f"score must be 'softmax' (single-label: the class's probability) or 'sigmoid' (multi-label: "
                         f"the attribute's own probability), got {score!r}")
    return score


def _probability(logits: Tensor, targets: Tensor, score: str) -> Tensor:
    """The probability of each row's target: softmax over the classes, or the sigmoid of the target's logit alone."""
    if score == "sigmoid":
        return torch.sigmoid(logits.gather(1, targets[:, None])[:, 0])
    return logits.softmax(dim=1).gather(1, targets[:, None])[:, 0]


def _target_probabilities(model: nn.Module, images: Tensor, targets: Tensor, batch_size: int,
                          score: str = "softmax") -> Tensor:
    """Probability of each image's target (see :func:`_probability`), run in chunks without gradients."""
    probabilities = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            logits = _logits_of(model(images[start : start + batch_size])).float()
            probabilities.append(_probability(logits, targets[start : start + batch_size], score))
    return torch.cat(probabilities)


# ----------------------------------------------------------------------------------------------------------------
# Pointing game


class PointingGame(Metric):
    """Pointing game (Zhang et al.): share of maps whose maximum falls on the object's box.

    The maximum is the first argmax in row-major order. It is a hit when its Euclidean distance (in pixels,
    0 inside) to the box is at most ``tolerance_px = tolerance * min(H, W) / reference_size``: the paper's
    15 px at 224-px images, scaled down for smaller images. A constant map (max == min, e.g. all zeros) points
    nowhere and counts as a miss. ``compute()`` returns hits / maps in [0, 1]; ``tolerance_px`` holds the value
    used by the last ``update`` so reports can state it.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    hits: Tensor
    total: Tensor

    def __init__(self, tolerance: float = 15.0, reference_size: int = 224, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if tolerance < 0:
            raise ValueError(f"tolerance must be ≥ 0 pixels, got {tolerance}")
        if reference_size <= 0:
            raise ValueError(f"reference_size must be a positive image side in pixels, got {reference_size}")
        self.tolerance = float(tolerance)
        self.reference_size = int(reference_size)
        self.tolerance_px: Optional[float] = None
        self.add_state("hits", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    @staticmethod
    def tolerance_for_size(height: int, width: int, tolerance: float = 15.0, reference_size: int = 224) -> float:
        """The tolerance in pixels for an image of ``height``×``width``: tolerance · min(H, W) / reference_size."""
        return float(tolerance) * min(int(height), int(width)) / float(reference_size)

    def update(self, maps: Tensor, boxes: Tensor, image_size: Optional[tuple[int, int]] = None) -> None:
        maps = _as_map_batch(maps)
        height, width = _image_size(maps, image_size)
        maps = _resize_maps(maps, (height, width))
        boxes = _check_boxes(boxes, maps.shape[0]).to(maps.device)
        self.tolerance_px = self.tolerance_for_size(height, width, self.tolerance, self.reference_size)

        flat = maps.flatten(1)
        peak_index = flat.argmax(dim=1)  # the first maximum, row-major
        peak_row = (peak_index // width).float()
        peak_col = (peak_index % width).float()
        # Distance from the peak to the nearest pixel of the box (columns x0..x1-1, rows y0..y1-1).
        nearest_col = torch.minimum(torch.maximum(peak_col, boxes[:, 0]), boxes[:, 2] - 1)
        nearest_row = torch.minimum(torch.maximum(peak_row, boxes[:, 1]), boxes[:, 3] - 1)
        distance = torch.hypot(peak_col - nearest_col, peak_row - nearest_row)
        has_peak = flat.amax(dim=1) > flat.amin(dim=1)
        hit = has_peak & (distance <= self.tolerance_px + 1e-6)

        self.hits += hit.sum().to(self.hits)
        self.total += torch.tensor(float(maps.shape[0]), dtype=self.total.dtype, device=self.total.device)

    def compute(self) -> Tensor:
        return (self.hits / self.total.clamp(min=1)).float()


class _MapEnergy(Metric):
    """Shared by the energy metrics: per map, the share of its mass (the map clamped to ≥ 0) on a region of the
    image; an all-zero map scores 0. ``compute()`` returns the mean over the maps counted."""

    is_differentiable = False
    full_state_update = False

    score_sum: Tensor
    total: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("score_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    @staticmethod
    def _maps_and_own_boxes(maps: Tensor, boxes: Tensor,
                            image_size: Optional[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """The B×H×W maps at the image size, clamped to ≥ 0, and the B×H×W masks of their (own) boxes."""
        maps = _as_map_batch(maps)
        height, width = _image_size(maps, image_size)
        maps = _resize_maps(maps, (height, width)).clamp(min=0)
        boxes = _check_boxes(boxes, maps.shape[0]).to(maps.device)
        return maps, _box_masks(boxes, height, width)

    def _add(self, maps: Tensor, region: Tensor) -> None:
        """Count each of the B maps, scored on its own B×H×W boolean ``region``."""
        inside = (maps * region).sum(dim=(1, 2))
        mass = maps.sum(dim=(1, 2))
        scores = torch.where(mass > 0, inside / mass.clamp(min=1e-30), torch.zeros_like(mass))
        self.score_sum += scores.sum().to(self.score_sum)
        self.total += torch.tensor(float(maps.shape[0]), dtype=self.total.dtype, device=self.total.device)

    def compute(self) -> Tensor:
        return (self.score_sum / self.total.clamp(min=1)).float()


class EnergyPointingGame(_MapEnergy):
    """Energy-based pointing game: mean over maps of the share of the map's mass inside the box.

    Each map is clamped to ≥ 0; per map the score is sum(map · box mask) / sum(map), and an all-zero map
    scores 0. ``compute()`` returns the mean score in [0, 1].
    """

    higher_is_better = True

    def update(self, maps: Tensor, boxes: Tensor, image_size: Optional[tuple[int, int]] = None) -> None:
        maps, own = self._maps_and_own_boxes(maps, boxes, image_size)
        self._add(maps, own)


class OtherObjectsEnergy(_MapEnergy):
    """For multi-label data: the share of an attribute's map that falls on the *other* objects of the image.

    ``boxes``: the attribute's own box per map (B×4); ``other_boxes``: B×K×4 boxes of the image's other objects,
    rows of NaN where there is none (multi-attribute data gives B×T×4 with NaN rows for absent attributes: set the
    attribute's own row to NaN). Per map: mass inside any other box but outside the own box / the map's mass (the
    map clamped to ≥ 0; an all-zero map scores 0). Maps of images without another object are not counted.
    ``compute()`` returns the mean over the counted maps, in [0, 1], lower is better (an attribute's map should
    light up its own object, not all of them); NaN when no map was counted. With :class:`EnergyPointingGame` on
    the own box, own + other ≤ 1.
    """

    higher_is_better = False

    def update(self, maps: Tensor, boxes: Tensor, other_boxes: Tensor,
               image_size: Optional[tuple[int, int]] = None) -> None:
        maps, own = self._maps_and_own_boxes(maps, boxes, image_size)
        other_boxes = torch.as_tensor(other_boxes).float().to(maps.device)
        if other_boxes.dim() != 3 or other_boxes.shape[0] != maps.shape[0] or other_boxes.shape[2] != 4:
            raise ValueError(f"other_boxes must have shape B×K×4 (NaN rows where there is no object) for "
                             f"{maps.shape[0]} maps, got {tuple(other_boxes.shape)}")
        height, width = maps.shape[1:]
        present = torch.isfinite(other_boxes).all(dim=2)  # B×K
        others = torch.zeros_like(own)
        for k in range(other_boxes.shape[1]):
            masks = _box_masks(torch.nan_to_num(other_boxes[:, k]), height, width)
            others |= masks & present[:, k, None, None]
        counted = present.any(dim=1)
        self._add(maps[counted], (others & ~own)[counted])

    def compute(self) -> Tensor:
        return (self.score_sum / self.total).float()  # NaN when no map was counted


# ----------------------------------------------------------------------------------------------------------------
# Weakly-supervised localisation


def box_from_map(map2d: Tensor, threshold: float = 0.15) -> Tensor:
    """Box (x0, y0, x1, y1), x1/y1 exclusive, around the largest blob of ``map2d`` above ``threshold`` · max.

    Pixels with value ≥ threshold · max form the foreground; its largest 8-connected component (the first in
    row-major order on a tie) gives the box. A map whose maximum is ≤ 0 (e.g. all zeros) has no foreground and
    gets the whole image, (0, 0, W, H); so does a constant positive map, whose every pixel passes. Returns a
    long tensor of 4 values on the map's device.
    """
    if not isinstance(map2d, Tensor) or map2d.dim() != 2:
        shape = tuple(map2d.shape) if isinstance(map2d, Tensor) else type(map2d).__name__
        raise ValueError(f"map2d must be one H×W map, got {shape}; loop over a batch or use LocalizationError")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a fraction of the map's maximum, in [0, 1]; got {threshold}")
    height, width = map2d.shape
    values = map2d.detach().float().cpu().numpy()
    peak = float(values.max())
    if not peak > 0:
        return torch.tensor([0, 0, width, height], dtype=torch.long, device=map2d.device)
    foreground = values >= threshold * peak
    labels, count = ndimage.label(foreground, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    largest = int(np.argmax(sizes)) + 1  # argmax takes the first label on a tie
    rows, cols = np.nonzero(labels == largest)
    box = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
    return torch.tensor(box, dtype=torch.long, device=map2d.device)


class LocalizationError(Metric):
    """Top-1 weakly-supervised localisation error (as in the Grad-CAM paper).

    Each map (resized to the image) gives a box through :func:`box_from_map` (threshold · max, largest
    8-connected component). A sample is correct when the predicted class equals the label and the box's IoU
    with the ground-truth box is ≥ ``iou``. ``compute()`` returns 1 − correct / samples, in [0, 1].
    ``preds`` are B class indices or B×K scores (their argmax is taken).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    correct: Tensor
    total: Tensor

    def __init__(self, threshold: float = 0.15, iou: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a fraction of the map's maximum, in [0, 1]; got {threshold}")
        if not 0.0 < iou <= 1.0:
            raise ValueError(f"iou must be in (0, 1], got {iou}")
        self.threshold = float(threshold)
        self.iou = float(iou)
        self.add_state("correct", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(
        self,
        maps: Tensor,
        boxes: Tensor,
        preds: Tensor,
        labels: Tensor,
        image_size: Optional[tuple[int, int]] = None,
    ) -> None:
        maps = _as_map_batch(maps)
        height, width = _image_size(maps, image_size)
        maps = _resize_maps(maps, (height, width))
        batch = maps.shape[0]
        boxes = _check_boxes(boxes, batch).to(maps.device)
        preds = torch.as_tensor(preds, device=maps.device)
        if preds.dim() == 2:
            preds = preds.argmax(dim=1)
        labels = torch.as_tensor(labels, device=maps.device)
        if preds.shape != (batch,) or labels.shape != (batch,):
            raise ValueError(
                f"preds must be B indices or B×K scores and labels B indices for B={batch} maps; "
                f"got preds {tuple(preds.shape)}, labels {tuple(labels.shape)}"
            )
        found = torch.stack([box_from_map(single, self.threshold) for single in maps]).to(boxes)
        correct = (preds.long() == labels.long()) & (_box_iou(found, boxes) >= self.iou - 1e-9)
        self.correct += correct.sum().to(self.correct)
        self.total += torch.tensor(float(batch), dtype=self.total.dtype, device=self.total.device)

    def compute(self) -> Tensor:
        return (1.0 - self.correct / self.total.clamp(min=1)).float()


# ----------------------------------------------------------------------------------------------------------------
# Deletion and insertion (RISE)


def blurred(images: Tensor, sigma: Optional[float] = None) -> Tensor:
    """A strongly Gaussian-blurred copy of B×C×H×W images (the insertion start of RISE).

    ``sigma`` defaults to min(H, W) / 8 pixels (4 px at 32², 8 px at 64²), which leaves only the coarse colour
    layout. RISE used kernel 11, sigma 5 at 224²; scaled to our 32–64-px images that would barely blur, so the
    default is relatively stronger. The kernel spans ±3 sigma, cut to fit the image.
    """
    height, width = images.shape[-2:]
    if sigma is None:
        sigma = min(height, width) / 8.0
    if sigma <= 0:
        raise ValueError(f"blur sigma must be > 0 pixels, got {sigma}")
    half = min(math.ceil(3 * sigma), min(height, width) - 1)  # reflect padding needs half < side
    if half < 1:
        return images.clone()
    return gaussian_blur(images, kernel_size=[2 * half + 1, 2 * half + 1], sigma=[sigma, sigma])


class _PixelOrderAUC(Metric):
    """Shared machinery of deletion and insertion: perturb pixels in map order, integrate the probability."""

    is_differentiable = False
    full_state_update = False
    inserts: bool  # False: deletion (image → baseline); True: insertion (baseline → image)

    auc_sum: Tensor
    curve_sum: Tensor
    total: Tensor

    def __init__(
        self,
        steps: int = 32,
        baseline: Baseline = 0.0,
        batch_size: int = 128,
        blur_sigma: Optional[float] = None,
        score: str = "softmax",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.score = _check_score(score)
        if int(steps) < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        if isinstance(baseline, str) and baseline != "blur":
            raise ValueError(f"baseline must be a number, a tensor or 'blur', got {baseline!r}")
        self.steps = int(steps)
        self.baseline = baseline
        self.batch_size = _check_batch_size(batch_size)
        self.blur_sigma = blur_sigma
        self.add_state("auc_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("curve_sum", default=torch.zeros(self.steps + 1), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def _baseline_images(self, images: Tensor) -> Tensor:
        if isinstance(self.baseline, str):
            return blurred(images, self.blur_sigma)
        try:
            return torch.as_tensor(self.baseline, dtype=images.dtype, device=images.device).expand_as(images)
        except RuntimeError as error:
            raise ValueError(
                f"baseline of shape {tuple(torch.as_tensor(self.baseline).shape)} does not broadcast to images "
                f"{tuple(images.shape)}; pass a number, a C×1×1 tensor or one of the images' shape"
            ) from error

    def probability_curves(self, model: nn.Module, images: Tensor, maps: Tensor, targets: Tensor) -> Tensor:
        """B×(steps+1) target probabilities: column 0 is the start image, column ``steps`` the end image.

        Pixels are taken in descending map order; ties go in row-major order (a stable sort). Step s has the
        first ``s · H·W // steps`` pixels (all channels) replaced.
        """
        maps = _as_map_batch(maps)
        targets = _check_images(images, maps, targets)
        batch, _, height, width = images.shape
        maps = _resize_maps(maps.to(images.device), (height, width))

        order = torch.argsort(maps.flatten(1), dim=1, descending=True, stable=True)
        rank = torch.empty_like(order)
        positions = torch.arange(height * width, device=images.device).expand(batch, -1)
        rank.scatter_(1, order, positions)
        rank = rank.view(batch, 1, height, width)  # the position of each pixel in the order
        counts = torch.arange(self.steps + 1, device=images.device) * (height * width) // self.steps

        other = self._baseline_images(images)
        start, end = (other, images) if self.inserts else (images, other)

        # Every (image, step) pair is one model input; build them chunk by chunk to bound the memory.
        pair_count = batch * (self.steps + 1)
        probabilities = torch.empty(pair_count, device=images.device)
        with torch.no_grad():
            for first in range(0, pair_count, self.batch_size):
                pairs = torch.arange(first, min(first + self.batch_size, pair_count), device=images.device)
                sample, step = pairs // (self.steps + 1), pairs % (self.steps + 1)
                replaced = rank[sample] < counts[step].view(-1, 1, 1, 1)
                inputs = torch.where(replaced, end[sample], start[sample])
                logits = _logits_of(model(inputs)).float()
                probabilities[pairs] = _probability(logits, targets[sample], self.score)
        return probabilities.view(batch, self.steps + 1)

    def update(self, model: nn.Module, images: Tensor, maps: Tensor, targets: Tensor) -> None:
        curves = self.probability_curves(model, images, maps, targets)
        areas = torch.trapezoid(curves, dx=1.0 / self.steps, dim=1)
        self.auc_sum += areas.sum().to(self.auc_sum)
        self.curve_sum += curves.sum(dim=0).to(self.curve_sum)
        self.total += torch.tensor(float(curves.shape[0]), dtype=self.total.dtype, device=self.total.device)

    def compute(self) -> Tensor:
        return (self.auc_sum / self.total.clamp(min=1)).float()

    def mean_curve(self) -> Tensor:
        """The mean probability curve over all samples so far (steps + 1 values, x = linspace(0, 1)), for plots.

        Like ``compute()`` it gathers the states of all processes under DDP (every process must call it).
        """
        with self.sync_context(should_sync=self.sync_on_compute and not self._is_synced):
            return (self.curve_sum / self.total.clamp(min=1)).float()


class DeletionAUC(_PixelOrderAUC):
    """Deletion AUC (Petsiuk et al., RISE): lower is better.

    Starting from the image, the pixels are replaced by ``baseline`` in descending map order, in ``steps``
    equal chunks; the target's softmax probability is recorded after each chunk (step 0 = the unmodified
    image) and the area under that curve (trapezoid, x in [0, 1]) is the score. ``compute()`` returns the mean
    area in [0, 1]. ``baseline``: a number (default 0.0, i.e. the data set's mean colour in normalised space),
    a tensor broadcastable to the images, or ``"blur"`` (see :func:`blurred`). Default ``steps=32``: at 32² that
    is 32 pixels per step, at 64² 128 (RISE took 224 per step at 224²). ``batch_size`` perturbed images go
    through the model at once. ``score="sigmoid"``: the curve of a multi-label attribute's σ(logit) instead.
    """

    higher_is_better = False
    inserts = False

    def __init__(
        self,
        steps: int = 32,
        baseline: Baseline = 0.0,
        batch_size: int = 128,
        blur_sigma: Optional[float] = None,
        score: str = "softmax",
        **kwargs: Any,
    ) -> None:
        super().__init__(steps=steps, baseline=baseline, batch_size=batch_size, blur_sigma=blur_sigma, score=score,
                         **kwargs)


class InsertionAUC(_PixelOrderAUC):
    """Insertion AUC (Petsiuk et al., RISE): higher is better.

    Starting from ``baseline`` (default ``"blur"``, a strongly blurred copy of the image as in RISE; pass 0.0
    for the mean-colour image), the image's pixels are put back in descending map order, in ``steps`` equal
    chunks; the area under the target's softmax probability curve is the score. Otherwise as
    :class:`DeletionAUC`.
    """

    higher_is_better = True
    inserts = True

    def __init__(
        self,
        steps: int = 32,
        baseline: Baseline = "blur",
        batch_size: int = 128,
        blur_sigma: Optional[float] = None,
        score: str = "softmax",
        **kwargs: Any,
    ) -> None:
        super().__init__(steps=steps, baseline=baseline, batch_size=batch_size, blur_sigma=blur_sigma, score=score,
                         **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Average drop / increase in confidence (Grad-CAM++)


class AverageDropIncrease(Metric):
    """Average Drop and Increase in Confidence (Grad-CAM++ paper), relative form, in one pass.

    Y = target probability on the images, O = on images · map (map resized to the image, clamped to [0, 1],
    shared by all channels). Per sample drop = max(0, Y − O) / Y (0 when Y is 0) and increase = [O > Y].
    ``compute()`` returns a dict ``{"average_drop": mean drop, "increase_in_confidence": share with an
    increase}``, both fractions in [0, 1]; ``score="sigmoid"``: Y and O are a multi-label attribute's σ(logit).
    One class rather than two so the model runs once for both; as the two scores point in opposite directions,
    ``higher_is_better`` is None and ``higher_is_better_by_key`` says which way each goes (average drop: lower is
    better; increase: higher is better).
    """

    is_differentiable = False
    higher_is_better = None
    higher_is_better_by_key = {"average_drop": False, "increase_in_confidence": True}
    full_state_update = False

    drop_sum: Tensor
    increase_count: Tensor
    total: Tensor

    def __init__(self, batch_size: int = 128, score: str = "softmax", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_size = _check_batch_size(batch_size)
        self.score = _check_score(score)
        self.add_state("drop_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("increase_count", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, model: nn.Module, images: Tensor, maps: Tensor, targets: Tensor) -> None:
        maps = _as_map_batch(maps)
        targets = _check_images(images, maps, targets)
        maps = _resize_maps(maps.to(images.device), tuple(images.shape[-2:])).clamp(0, 1)
        full = _target_probabilities(model, images, targets, self.batch_size, self.score)
        masked = _target_probabilities(model, images * maps[:, None].to(images.dtype), targets, self.batch_size,
                                       self.score)
        drop = (full - masked).clamp(min=0) / full.clamp(min=1e-30)  # numerator is 0 whenever full is 0
        self.drop_sum += drop.sum().to(self.drop_sum)
        self.increase_count += (masked > full).sum().to(self.increase_count)
        self.total += torch.tensor(float(images.shape[0]), dtype=self.total.dtype, device=self.total.device)

    def compute(self) -> dict[str, Tensor]:
        samples = self.total.clamp(min=1)
        return {
            "average_drop": (self.drop_sum / samples).float(),
            "increase_in_confidence": (self.increase_count / samples).float(),
        }


# ----------------------------------------------------------------------------------------------------------------
# The metrics of abn-explain: one table entry per metric


@dataclass(frozen=True)
class Evidence:
    """One batch of one explanation, as the metrics take it: maps for the predicted and for the true classes.

    For one attribute of a multi-label model both maps are the attribute's, ``preds`` / ``labels`` say whether the
    model predicts / the image has it, ``boxes`` is its box and ``other_boxes`` (B×T×4, NaN rows) the other objects'.
    """

    model: nn.Module
    images: Tensor
    maps_pred: Tensor
    maps_label: Tensor
    preds: Tensor
    labels: Tensor
    boxes: Optional[Tensor]
    other_boxes: Optional[Tensor] = None


@dataclass(frozen=True)
class MetricSpec:
    """A metric of ``abn-explain``: how to build it from the ``metrics`` settings and the data's task (``multiclass``
    or ``multilabel``), which :class:`Evidence` fields its ``update`` takes (in order), the table columns its
    ``compute()`` fills (one value, or a dict by column) and the tasks it applies to."""

    name: str
    build: Callable[[Any, str], Metric]
    inputs: tuple[str, ...]
    columns: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ("multiclass", "multilabel")

    @property
    def needs_boxes(self) -> bool:
        """It scores against the ground-truth box (data sets without boxes skip it)."""
        return "boxes" in self.inputs

    @property
    def needs_model(self) -> bool:
        """It runs the model again on changed images (``metrics.faithfulness=false`` skips it)."""
        return "model" in self.inputs

    def update(self, metric: Metric, evidence: Evidence) -> None:
        metric.update(*(getattr(evidence, name) for name in self.inputs))

    @property
    def table_columns(self) -> tuple[str, ...]:
        return self.columns or (self.name,)

    def summary(self, value: Any) -> dict[str, float]:
        """Table column → value, from ``compute()``'s result."""
        if isinstance(value, dict):
            return {column: float(value[column]) for column in self.table_columns}
        (column,) = self.table_columns
        return {column: float(value)}


POINTING_INPUTS = ("maps_label", "boxes")  # the map of the true class, against the object's box
FAITHFULNESS_INPUTS = ("model", "images", "maps_pred", "preds")  # the map of the prediction, against the model
# what the faithfulness metrics score: a class's softmax probability, or an attribute's own σ(logit)
SCORE_OF_TASK = {"multiclass": "softmax", "multilabel": "sigmoid"}

# ``settings``: the ``metrics`` section of conf/explain.yaml; ``task``: the data's
METRIC_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("pointing_game", lambda settings, task: PointingGame(tolerance=settings.pointing_tolerance),
               POINTING_INPUTS),
    MetricSpec("energy_pointing_game", lambda settings, task: EnergyPointingGame(), POINTING_INPUTS),
    MetricSpec("energy_other_objects", lambda settings, task: OtherObjectsEnergy(),
               ("maps_label", "boxes", "other_boxes"), tasks=("multilabel",)),
    MetricSpec("localization_error",
               lambda settings, task: LocalizationError(threshold=settings.loc_threshold, iou=settings.loc_iou),
               ("maps_pred", "boxes", "preds", "labels")),
    MetricSpec("deletion_auc",
               lambda settings, task: DeletionAUC(steps=settings.deletion_steps, score=SCORE_OF_TASK[task]),
               FAITHFULNESS_INPUTS),
    MetricSpec("insertion_auc",
               lambda settings, task: InsertionAUC(steps=settings.deletion_steps, score=SCORE_OF_TASK[task]),
               FAITHFULNESS_INPUTS),
    MetricSpec("confidence", lambda settings, task: AverageDropIncrease(score=SCORE_OF_TASK[task]),
               FAITHFULNESS_INPUTS, columns=("average_drop", "increase_in_confidence")),
)
