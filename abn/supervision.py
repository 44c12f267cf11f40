"""Attention supervision: a loss between ABN's map and where the object is (DESIGN §8).

A batch that carries ground truth is ``(images, labels, boxes)`` (B×4 boxes x0, y0, x1, y1 in input pixels, x1/y1
exclusive) or ``(images, labels, masks)`` (B×1×H×W in [0, 1] at the input's size); an image whose box or mask is
NaN has none and is left out of the loss. :func:`target_masks` turns either into masks at the map's size, and
:data:`LOSSES` holds the loss forms compared in the literature, each a function of the map A (B×h×w, values ≥ 0)
and the mask m (B×h×w in [0, 1]) that returns one value per image:

* ``l1``, ``mse``: the map matched to the mask, mean |A − m| or (A − m)² (GALS ``match``; Rao et al.'s L1);
* ``energy``: 1 − Σ m·A / Σ A, the share of the map outside the object (Rao et al.'s energy loss);
* ``rrr``: mean (1 − m)·A², the map squared outside the object ("right for the right reasons");
* ``bce``: −mean log A over the object's pixels, the map pushed to 1 inside, free outside (Rao et al.'s PPCE);
* ``suppress_outside``: mean |A − A·m|, the map outside the object toward 0 (GALS ``suppress_outside``, L1).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6


def l1_loss(maps: Tensor, masks: Tensor) -> Tensor:
    return (maps - masks).abs().mean(dim=(1, 2))


def mse_loss(maps: Tensor, masks: Tensor) -> Tensor:
    return (maps - masks).pow(2).mean(dim=(1, 2))


def energy_loss(maps: Tensor, masks: Tensor) -> Tensor:
    total = maps.sum(dim=(1, 2))
    inside = (maps * masks).sum(dim=(1, 2))
    return 1.0 - inside / (total + EPS)


def rrr_loss(maps: Tensor, masks: Tensor) -> Tensor:
    return ((1.0 - masks) * maps.pow(2)).mean(dim=(1, 2))


def bce_inside_loss(maps: Tensor, masks: Tensor) -> Tensor:
    """Cross-entropy of the map against 1 on the object's pixels, averaged over them (an empty mask gives 0)."""
    log_inside = -torch.log(maps.clamp(min=EPS, max=1.0)) * masks
    return log_inside.sum(dim=(1, 2)) / masks.sum(dim=(1, 2)).clamp(min=EPS)


def suppress_outside_loss(maps: Tensor, masks: Tensor) -> Tensor:
    return (maps - maps * masks).abs().mean(dim=(1, 2))


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "l1": l1_loss,
    "mse": mse_loss,
    "energy": energy_loss,
    "rrr": rrr_loss,
    "bce": bce_inside_loss,
    "suppress_outside": suppress_outside_loss,
}
# which map is supervised: the attention branch's map M (class-agnostic), or the attention branch's map of the
# image's labelled class (sigmoid of the K×h×w maps whose spatial mean is the attention logit)
SUPERVISED_MAPS = ("attention", "class")


def check_supervision(loss: Optional[str], weight: float, supervised_map: str) -> None:
    """One ValueError per bad ``model.attention_supervision`` value, naming it and the valid ones."""
    if loss is not None and loss not in LOSSES:
        raise ValueError(f"model.attention_supervision.loss must be one of {', '.join(LOSSES)} (or null: no "
                         f"supervision), got {loss!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
        raise ValueError(f"model.attention_supervision.weight must be a number ≥ 0 (the loss term's weight beside "
                         f"the classification losses, e.g. 1.0), got {weight!r}")
    if supervised_map not in SUPERVISED_MAPS:
        raise ValueError(f"model.attention_supervision.map must be one of {', '.join(SUPERVISED_MAPS)} (attention: "
                         f"the map M; class: the attention branch's map of the labelled class), got {supervised_map!r}")


def masks_from_boxes(boxes: Tensor, size: Sequence[int]) -> Tensor:
    """B×4 boxes (x0, y0, x1, y1, x1/y1 exclusive) → B×H×W masks, 1 on the pixels a box covers (partly covered
    border pixels get the covered share); a NaN box gives a NaN mask."""
    height, width = size
    rows = torch.arange(height, device=boxes.device, dtype=boxes.dtype)
    cols = torch.arange(width, device=boxes.device, dtype=boxes.dtype)
    x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))
    # the length of [pixel, pixel + 1) inside [start, end): fractional at a box's border
    cover_x = (torch.minimum(cols + 1, x1) - torch.maximum(cols, x0)).clamp(0, 1)  # B×W
    cover_y = (torch.minimum(rows + 1, y1) - torch.maximum(rows, y0)).clamp(0, 1)  # B×H
    return cover_y[:, :, None] * cover_x[:, None, :]


def target_masks(ground_truth: Tensor, input_size: Sequence[int], map_size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(masks B×h×w at the map's size, B booleans: whether the image has ground truth) from a batch's boxes (B×4)
    or masks (B×1×H×W). Resized by area averaging: a map cell's target is the share of it the object covers."""
    if ground_truth.dim() == 2 and ground_truth.shape[1] == 4:
        masks = masks_from_boxes(ground_truth.float(), input_size)
    elif ground_truth.dim() == 4 and ground_truth.shape[1] == 1:
        masks = ground_truth[:, 0].float()
    else:
        raise ValueError(f"attention supervision reads boxes (B×4) or masks (B×1×H×W) as the batch's third element, "
                         f"got shape {tuple(ground_truth.shape)}; this data module does not hand over ground truth "
                         "in that form")
    present = torch.isfinite(masks).all(dim=2).all(dim=1)
    masks = torch.nan_to_num(masks, nan=0.0).clamp(0.0, 1.0)
    if tuple(masks.shape[-2:]) != tuple(map_size):
        masks = F.adaptive_avg_pool2d(masks[:, None], tuple(map_size))[:, 0]
    return masks, present


def supervision_loss(loss: str, maps: Tensor, masks: Tensor, present: Tensor) -> Optional[Tensor]:
    """The mean loss over the images that have ground truth; None when no image of the batch has any."""
    if not bool(present.any()):
        return None
    return LOSSES[loss](maps[present].float(), masks[present].float()).mean()
