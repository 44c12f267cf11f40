"""Maps → coloured overlays → image grids (matplotlib colormaps, torchvision grids)."""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, make_grid


def colorize(maps: Tensor, cmap: str = "jet") -> Tensor:
    """B×h×w values in [0, 1] → B×3×h×w RGB through a matplotlib colormap (values outside are clipped)."""
    lut = torch.tensor(matplotlib.colormaps[cmap](torch.linspace(0, 1, 256).numpy())[:, :3], dtype=torch.float32)
    index = (maps.detach().float().clamp(0, 1) * 255).round().long().cpu()
    return lut[index].permute(0, 3, 1, 2)


def overlay(images: Tensor, maps: Tensor, cmap: str = "jet", alpha: float = 0.5) -> Tensor:
    """Blend maps (B×h×w or B×1×h×w, in [0, 1]) up-sampled bilinearly onto images (B×C×H×W, in [0, 1])."""
    if maps.dim() == 4:
        maps = maps[:, 0]
    maps = F.interpolate(maps[:, None].float(), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    images = images.detach().float().cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return (1 - alpha) * images + alpha * colorize(maps, cmap)


def scale_by_max(maps: Tensor, eps: float = 1e-12) -> Tensor:
    """ReLU then divide each map by its maximum (CAM-style maps have no fixed range); an all-zero map stays zero."""
    maps = maps.clamp(min=0)
    peak = maps.flatten(1).amax(dim=1).clamp(min=eps)
    return maps / peak.view(-1, *([1] * (maps.dim() - 1)))


def draw_boxes(images: Tensor, boxes: Optional[Tensor], colour: str = "white") -> Tensor:
    """Draw one box (x0, y0, x1, y1) per image; images in [0, 1], returned in [0, 1]."""
    if boxes is None:
        return images
    out = []
    for image, box in zip(images, boxes):
        as_bytes = (image.clamp(0, 1) * 255).to(torch.uint8)
        if as_bytes.shape[0] == 1:
            as_bytes = as_bytes.expand(3, -1, -1)
        drawn = draw_bounding_boxes(as_bytes, (box - torch.tensor([0, 0, 1, 1])).view(1, 4), colors=colour)
        out.append(drawn.float() / 255)
    return torch.stack(out)


def side_by_side(columns: Sequence[Tensor], padding: int = 2) -> Tensor:
    """One grid, a row per image, a column per tensor in ``columns`` (each B×3×H×W)."""
    stacked = torch.stack([c.float().cpu() if c.shape[1] == 3 else c.float().cpu().expand(-1, 3, -1, -1) for c in columns], 1)
    return make_grid(stacked.flatten(0, 1), nrow=len(columns), padding=padding, pad_value=1.0)


def save_titled_grid(grid: Tensor, titles: Sequence[str], path, scale: float = 3.0) -> None:
    """Save a :func:`side_by_side` grid as a PNG, enlarged ``scale`` times (nearest), with a title over each column."""
    import matplotlib.pyplot as plt

    height, width = grid.shape[-2:]
    dpi = 100
    figure = plt.figure(figsize=(width * scale / dpi, (height * scale + 40) / dpi), dpi=dpi)
    axes = figure.add_axes((0, 0, 1, height * scale / (height * scale + 40)))
    axes.imshow(grid.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    axes.set_xticks([(i + 0.5) * width / len(titles) for i in range(len(titles))], labels=list(titles), fontsize=8)
    axes.xaxis.tick_top()
    axes.tick_params(length=0)
    axes.set_yticks([])
    for side in axes.spines.values():
        side.set_visible(False)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
