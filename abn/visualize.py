"""Maps and images → one titled figure (column titles, colour bar, caption) as a C×H×W tensor or a PNG.

Every grid of the project is drawn here: :func:`attention_grid` (TensorBoard's ``val/attention``),
:func:`attribute_grid` (``val/attribute_maps`` of the multi-task ABN) and :func:`explanation_grid`
(``val/explanations``, ``explain/<split>`` and the PNGs of ``abn-explain``), all through :func:`render_columns`. The tiles are composed in torch and placed pixel for pixel
(``figimage``); matplotlib only adds the text and the colour bar. It draws on a bare ``Figure`` with an Agg canvas,
never pyplot: no screen needed, no global figure left open, each figure freed as soon as its pixels are copied.
"""

from __future__ import annotations

import gc
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

DPI = 100  # 1 inch = 100 px: the layout below is in pixels
TITLE_PT, CAPTION_PT, BAR_PT = 9.0, 8.5, 8.0
PAD, GAP = 8, 6  # outer margin, space between tiles (px)
BAR_GAP, BAR_WIDTH, BAR_TICKS = 10, 12, 34  # colour bar: space before it, its width, its tick labels (px)
NON_FINITE_RGB = (1.0, 0.0, 1.0)  # where a map is nan or inf: magenta, a colour of none of jet, turbo, viridis, inferno


@dataclass
class GridColumn:
    """One column of a figure: a title, and per row an image, a map, or a map over its image.

    ``images``: B×C×H×W in [0, 1], shown as they are. ``maps``: B×h×w (or B×1×h×w) in [0, 1], shown through the
    colormap with 0 and 1 fixed (nothing is stretched). Both: the map over the image in dimmed grey.
    """

    title: str
    images: Optional[Tensor] = None
    maps: Optional[Tensor] = None

    def __post_init__(self):
        if self.images is None and self.maps is None:
            raise ValueError(f"column {self.title!r} has neither images nor maps")


def colorize(maps: Tensor, cmap: str = "jet") -> Tensor:
    """B×h×w values in [0, 1] → B×3×h×w RGB through a matplotlib colormap (outside values clipped), nan and ±inf in
    ``NON_FINITE_RGB``: a map of a diverged network must not pass for a flat one."""
    lut = torch.tensor(matplotlib.colormaps[cmap](torch.linspace(0, 1, 256).numpy())[:, :3], dtype=torch.float32)
    maps = maps.detach().float().cpu()
    index = (torch.nan_to_num(maps, nan=0.0).clamp(0, 1) * 255).round().long()
    marked = torch.tensor(NON_FINITE_RGB).view(1, 3, 1, 1)
    return torch.where(maps.isfinite()[:, None], lut[index].permute(0, 3, 1, 2), marked)


def has_non_finite(maps: Optional[Tensor]) -> bool:
    return maps is not None and not bool(maps.isfinite().all())


def grey(images: Tensor) -> Tensor:
    """B×C×H×W RGB (or one channel) → B×1×H×W luminance (ITU-R 601 weights)."""
    if images.shape[1] == 1:
        return images
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images[:, :3] * weights).sum(1, keepdim=True)


def overlay(images: Tensor, maps: Tensor, cmap: str = "jet", alpha: float = 0.5, dim: float = 0.6) -> Tensor:
    """The coloured map (opacity ``alpha``) over the image turned grey and dimmed by ``dim``.

    Grey keeps the input's colours from mixing with the colormap's, so the colour says the map's value. Maps
    (B×h×w or B×1×h×w, in [0, 1]) are up-sampled bilinearly to the images' size (B×C×H×W, in [0, 1]).
    """
    maps = maps.detach().float().cpu()
    maps = maps if maps.dim() == 4 else maps[:, None]
    if maps.shape[-2:] != images.shape[-2:]:
        maps = F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)
    maps = maps[:, 0]
    under = (dim * grey(images.detach().float().cpu())).expand(-1, 3, -1, -1)
    return (1 - alpha) * under + alpha * colorize(maps, cmap)


def scale_by_max(maps: Tensor, eps: float = 1e-12) -> Tensor:
    """ReLU then divide each map by its maximum (CAM-style maps have no fixed range); an all-zero map stays zero."""
    maps = maps.clamp(min=0)
    peak = maps.flatten(1).amax(dim=1).clamp(min=eps)
    return maps / peak.view(-1, *([1] * (maps.dim() - 1)))


def draw_boxes(images: Tensor, boxes: Optional[Tensor], colour: str = "white") -> Tensor:
    """Draw the boxes (x0, y0, x1, y1; x1/y1 exclusive) of each image: one per image (B×4), or several (B×T×4, rows
    of NaN for objects that are absent, as multi-attribute data gives them). Images in [0, 1], returned in [0, 1]."""
    if boxes is None:
        return images
    out = []
    for image, image_boxes in zip(images, boxes):
        image_boxes = image_boxes.reshape(-1, 4).float()
        image_boxes = image_boxes[torch.isfinite(image_boxes).all(dim=1)]
        as_bytes = (image.clamp(0, 1) * 255).to(torch.uint8)
        if as_bytes.shape[0] == 1:
            as_bytes = as_bytes.expand(3, -1, -1)
        if len(image_boxes):
            as_bytes = draw_bounding_boxes(as_bytes, image_boxes - torch.tensor([0, 0, 1, 1]), colors=colour)
        out.append(as_bytes.float() / 255)
    return torch.stack(out)


def tile_size(height: int, width: int, tile: int = 96) -> tuple[int, int]:
    """Display size of an input: small ones enlarged a whole number of times to at least ``tile`` px (square
    pixels), up to 2 × ``tile`` shown as they are, larger ones shrunk to 2 × ``tile``."""
    longest = max(height, width)
    if longest < tile:
        factor = math.ceil(tile / longest)
    elif longest > 2 * tile:
        factor = 2 * tile / longest
    else:
        return height, width
    return max(1, round(height * factor)), max(1, round(width * factor))


def _resize(batch: Tensor, size: tuple[int, int], smooth: bool) -> Tensor:
    if tuple(batch.shape[-2:]) == size:
        return batch
    shrink = size[0] < batch.shape[-2]
    if smooth or shrink:  # maps are smooth by nature; shrinking needs antialiasing
        return F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return F.interpolate(batch, size=size, mode="nearest-exact")  # inputs: enlarged pixels stay sharp squares


def column_tiles(column: GridColumn, size: tuple[int, int], cmap: str, alpha: float) -> Tensor:
    """B×3×h×w RGB tiles in [0, 1] of one column at display ``size``."""
    maps = None
    if column.maps is not None:
        maps = column.maps.detach().float().cpu()
        maps = _resize(maps if maps.dim() == 4 else maps[:, None], size, smooth=True)[:, 0]
    if column.images is None:
        return colorize(maps, cmap)
    images = _resize(column.images.detach().float().cpu().clamp(0, 1), size, smooth=False)
    if maps is not None:
        return overlay(images, maps, cmap, alpha)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]


@lru_cache(maxsize=4096)  # the same titles and captions come back every epoch
def _text_px(text: str, points: float) -> float:
    """Width in pixels of one line of text as Agg draws it."""
    return RendererAgg(1, 1, DPI).get_text_width_height_descent(text, FontProperties(size=points), ismath=False)[0]


def _wrap(text: str, width_px: float, points: float) -> str:
    """Break ``text`` so that each line fits ``width_px``: between words, or after ``_ @ .`` inside a long name
    (method names such as ``guided_backprop``); a piece longer than the width keeps a line of its own."""
    lines: list[str] = []
    for word in text.split():
        for i, piece in enumerate(re.split(r"(?<=[_@.])(?=.)", word)):
            joined = f"{lines[-1]}{' ' if i == 0 else ''}{piece}" if lines else piece
            if lines and _text_px(joined, points) <= width_px:
                lines[-1] = joined
            else:
                lines.append(piece)
    return "\n".join(lines) or " "


def _line_px(points: float) -> float:
    """Height of one line of text (px)."""
    return 1.3 * points * DPI / 72


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread meanwhile: the tiles are small, so waking the thread pool costs more than it saves,
    and on busy cores each of its barriers waits for a time slice (3 to 5 times slower, measured on 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def mosaic(columns: Sequence[GridColumn], cmap: str, alpha: float, tile: int) -> tuple[Tensor, tuple[int, int]]:
    """The tiles, a row per image and a column per :class:`GridColumn`, white ``GAP`` between them: 3×H×W in
    [0, 1], and the size of one tile (from the first column with images, else the first column)."""
    counts = {len(c.images if c.images is not None else c.maps) for c in columns}
    if len(counts) != 1:
        raise ValueError(f"every column needs the same number of rows, got {sorted(counts)}")
    sizing = next((c.images for c in columns if c.images is not None), columns[0].maps)
    tile_h, tile_w = tile_size(*sizing.shape[-2:], tile=tile)
    tiles = torch.stack([column_tiles(c, (tile_h, tile_w), cmap, alpha) for c in columns], 1)  # B×K×3×h×w
    rows, cols = tiles.shape[:2]
    padded = F.pad(tiles, (0, GAP, 0, GAP), value=1.0)  # white right of and below every tile
    grid = padded.permute(2, 0, 3, 1, 4).reshape(3, rows * (tile_h + GAP), cols * (tile_w + GAP))
    return grid[:, :-GAP, :-GAP], (tile_h, tile_w)


def render_columns(columns: Sequence[GridColumn], cmap: str = "jet", alpha: float = 0.5, caption: str = "",
                   scale_label: str = "map value", tile: int = 96) -> Tensor:
    """The :func:`mosaic` under a title per column and ``caption`` (say what the scale means), with a colour bar
    (0 to 1, labelled ``scale_label``) when there are maps; nan or inf in a map is drawn in magenta, and the caption
    says so. Returns 3×H×W float in [0, 1], as ``SummaryWriter.add_image`` takes it."""
    if not columns:
        raise ValueError("render_columns needs at least one column")
    if any(has_non_finite(c.maps) for c in columns):
        caption = f"{caption} Magenta: nan or inf (the network's output is not finite).".strip()
    with one_thread():
        grid, (_, tile_w) = mosaic(columns, cmap, alpha, tile)
    has_maps = any(c.maps is not None for c in columns)
    rendered = _draw(grid, tile_w, [c.title for c in columns], caption, scale_label if has_maps else None, cmap)
    gc.collect(1)  # a Figure and its canvas refer to each other: free them now (as pyplot.close does), not later
    return rendered


def _draw(grid: Tensor, tile_w: int, titles: list[str], caption: str, scale_label: Optional[str], cmap: str) -> Tensor:
    """Lay out (in pixels) caption, titles and grid top to bottom, the colour bar right of the grid with its label
    along it; draw them on an Agg canvas and return its pixels."""
    grid_h, grid_w = grid.shape[1:]
    label = _wrap(scale_label, grid_h, BAR_PT) if scale_label is not None else ""
    bar_area = BAR_GAP + BAR_WIDTH + BAR_TICKS + (label.count("\n") + 1) * _line_px(BAR_PT) if label else 0
    width = math.ceil(PAD + grid_w + bar_area + PAD)
    caption = _wrap(caption, width - 2 * PAD, CAPTION_PT) if caption else ""
    caption_h = (caption.count("\n") + 1) * _line_px(CAPTION_PT) + 4 if caption else 0
    titles = [_wrap(title, tile_w + GAP - 2, TITLE_PT) for title in titles]
    top = math.ceil(PAD + caption_h + max(t.count("\n") + 1 for t in titles) * _line_px(TITLE_PT) + 4)
    height = top + grid_h + PAD

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    canvas = FigureCanvasAgg(figure)
    pixels = grid.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    figure.figimage(pixels, xo=PAD, yo=PAD, origin="upper")  # pixel for pixel: no resampling, no blur
    if caption:
        figure.text(PAD / width, 1 - PAD / height, caption, ha="left", va="top", fontsize=CAPTION_PT, color="0.2")
    for k, title in enumerate(titles):
        centre = PAD + k * (tile_w + GAP) + tile_w / 2
        figure.text(centre / width, 1 - (top - 3) / height, title, ha="center", va="bottom", fontsize=TITLE_PT,
                    linespacing=1.1)
    if label:
        bar = figure.add_axes(((PAD + grid_w + BAR_GAP) / width, PAD / height, BAR_WIDTH / width, grid_h / height))
        figure.colorbar(ScalarMappable(Normalize(0, 1), cmap), cax=bar)
        bar.tick_params(labelsize=BAR_PT)
        bar.set_ylabel(label, fontsize=BAR_PT, linespacing=1.1)
    canvas.draw()
    return torch.from_numpy(np.asarray(canvas.buffer_rgba())[..., :3].copy()).permute(2, 0, 1).float() / 255


def save_png(rendered: Tensor, path: Union[str, Path]) -> None:
    """Write a rendered figure (3×H×W in [0, 1], from :func:`render_columns`) as a PNG."""
    as_bytes = (rendered.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(as_bytes).save(path)


def save_columns(columns: Sequence[GridColumn], path: Union[str, Path], **options) -> Tensor:
    """:func:`render_columns` and write it to ``path`` as a PNG; returns the rendered tensor."""
    rendered = render_columns(columns, **options)
    save_png(rendered, path)
    return rendered


def shown_inputs(datamodule: Any, images: Tensor) -> Tensor:
    """Network inputs as people see them, in [0, 1] on the CPU: de-normalised by the data module where it can."""
    images = images.detach().cpu()
    return datamodule.denormalize(images) if hasattr(datamodule, "denormalize") else images.clamp(0, 1)


def input_column(shown: Tensor, boxes: Optional[Tensor]) -> GridColumn:
    """The first column of every grid: the inputs, with their ground-truth box where the data set has one."""
    return GridColumn("input + box" if boxes is not None else "input",
                      images=draw_boxes(shown, None if boxes is None else boxes.cpu()))


def explanation_grid(datamodule: Any, images: Tensor, boxes: Optional[Tensor], maps: Sequence[Tensor],
                     titles: Sequence[str], cmap: str, alpha: float) -> Tensor:
    """Input (with its box) | one titled overlay per map; every map already min-max scaled to [0, 1] (as
    :func:`abn.explain.explain` returns them). Returns the rendered figure, 3×H×W in [0, 1]."""
    shown = shown_inputs(datamodule, images)
    columns = [input_column(shown, boxes)]
    columns += [GridColumn(title, images=shown, maps=column) for title, column in zip(titles, maps, strict=True)]
    caption = ("Each map min-max scaled per image (0 = its minimum, 1 = its maximum), over the input in dimmed grey; "
               "class-specific methods explain the predicted class.")
    return render_columns(columns, cmap, alpha, caption, "min-max scaled per image")


def attention_grid(datamodule: Any, images: Tensor, boxes: Optional[Tensor], attention: Optional[Tensor],
                   cam: Optional[Tensor], cmap: str, alpha: float) -> Tensor:
    """Input (with its box) | the ABN attention map alone and over the input, as the sigmoid gives it (not
    stretched: a flat map looks flat) | the raw class activation map alone and over the input (ReLU, divided by its
    maximum: CAM has no fixed range). Either map may be None (a network without it). Returns 3×H×W in [0, 1]."""
    shown = shown_inputs(datamodule, images)
    columns = [input_column(shown, boxes)]
    label, caption = [], []  # what the colour bar's 0..1 means, per kind of map
    if attention is not None:
        columns += [GridColumn("ABN map", maps=attention), GridColumn("ABN map on input", images=shown, maps=attention)]
        label.append("ABN: sigmoid output as is")
        caption.append("ABN map: the attention branch's sigmoid output, 0 to 1, not stretched (a flat map looks flat).")
    if cam is not None:
        cam = scale_by_max(cam)
        columns += [GridColumn("CAM (predicted class)", maps=cam), GridColumn("CAM on input", images=shown, maps=cam)]
        label.append("CAM: fraction of the image's maximum")
        caption.append("CAM: ReLU, divided by each image's maximum (1 = its peak).")
    if caption:
        caption.append("Overlays: the map over the input in dimmed grey.")
    return render_columns(columns, cmap, alpha, " ".join(caption), " · ".join(label))


def scale_jointly(maps: Tensor, eps: float = 1e-12) -> Tensor:
    """Min-max scale each image's maps (B×T×h×w) together: 0 is the lowest value of any of its T maps, 1 the highest,
    so an attribute whose map stays low looks low beside one that lights up."""
    flat = maps.detach().float().flatten(1)
    low, high = flat.amin(dim=1).view(-1, 1, 1, 1), flat.amax(dim=1).view(-1, 1, 1, 1)
    return (maps.detach().float() - low) / (high - low).clamp(min=eps)


def attribute_grid(datamodule: Any, images: Tensor, boxes: Optional[Tensor], maps: Tensor, names: Sequence[str],
                   cmap: str, alpha: float) -> Tensor:
    """Input (with the boxes of its objects) | one titled overlay per attribute map of the multi-task ABN (``maps``:
    B×T×h×w for the T ``names``), each image's maps min-max scaled jointly. Returns 3×H×W in [0, 1]."""
    shown = shown_inputs(datamodule, images)
    scaled = scale_jointly(maps)
    columns = [input_column(shown, boxes)]
    columns += [GridColumn(name, images=shown, maps=scaled[:, t]) for t, name in enumerate(names)]
    caption = ("One attention map per attribute, over the input in dimmed grey; each image's maps min-max scaled "
               "together (0 = the lowest value of any of its maps, 1 = the highest).")
    return render_columns(columns, cmap, alpha, caption, "min-max over the image's maps")


def attribute_explanation_grid(datamodule: Any, images: Tensor, boxes: Optional[Tensor], maps: Sequence[Tensor],
                               names: Sequence[str], method: str, cmap: str, alpha: float) -> Tensor:
    """One method on a multi-label model (``abn-explain``): input (with the boxes of its objects) | one overlay per
    attribute, titled with its name, of ``method``'s map explaining that attribute's logit; every map already min-max
    scaled to [0, 1] on its own (as :func:`abn.explain.explain` returns them). Returns 3×H×W in [0, 1]."""
    shown = shown_inputs(datamodule, images)
    columns = [input_column(shown, boxes)]
    columns += [GridColumn(name, images=shown, maps=column) for name, column in zip(names, maps, strict=True)]
    caption = (f"{method}: one map per attribute, explaining that attribute's logit (present or not); each map min-max "
               "scaled per image (0 = its minimum, 1 = its maximum), over the input in dimmed grey.")
    return render_columns(columns, cmap, alpha, caption, "min-max scaled per image")
