"""Maps, overlays and the titled figure: shown as they are, pixel for pixel, with a colour bar, figures closed."""

from __future__ import annotations

import gc

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from abn.visualize import (NON_FINITE_RGB, GridColumn, _text_px, _wrap, colorize, draw_boxes, overlay, render_columns,
                           save_columns, scale_by_max, tile_size)

RED = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)


def jet(value: float) -> torch.Tensor:
    return torch.tensor(matplotlib.colormaps["jet"](round(value * 255) / 255)[:3], dtype=torch.float32)


def count_colour(rendered: torch.Tensor, colour: torch.Tensor, atol: float = 1.5 / 255) -> int:
    return int((rendered - colour.view(3, 1, 1)).abs().le(atol).all(0).sum())


def test_colorize_uses_the_colormap_without_stretching():
    flat = torch.full((1, 4, 4), 0.2)
    rgb = colorize(flat, "jet")
    torch.testing.assert_close(rgb[0, :, 0, 0], jet(0.2), atol=1e-6, rtol=0)
    assert torch.equal(rgb, rgb[:, :, :1, :1].expand_as(rgb))  # a flat map stays flat
    assert not colorize(torch.full((1, 2, 2), float("nan"))).isnan().any()


def test_overlay_puts_the_map_over_the_dimmed_grey_input():
    images = RED.expand(2, 3, 8, 8)
    maps = torch.ones(2, 1, 2, 2)
    out = overlay(images, maps, "gray", alpha=0.25, dim=0.5)
    assert out.shape == (2, 3, 8, 8)
    grey_red = 0.299 * 0.5  # luminance of pure red, dimmed: no red tint left under the map
    torch.testing.assert_close(out, torch.full_like(out, 0.75 * grey_red + 0.25))


def test_scale_by_max_handles_constant_and_negative_maps():
    maps = torch.stack([torch.zeros(3, 3), torch.full((3, 3), -2.0), torch.arange(9.0).view(3, 3)])
    scaled = scale_by_max(maps)
    assert not torch.isnan(scaled).any()
    assert scaled[0].abs().sum() == 0 and scaled[1].abs().sum() == 0 and scaled[2].max() == 1


def test_box_is_drawn_on_its_edge_only():
    images = torch.zeros(1, 3, 10, 10)
    drawn = draw_boxes(images, torch.tensor([[2.0, 3.0, 6.0, 8.0]]))
    assert drawn[0, :, 3, 2].eq(1).all() and drawn[0, :, 7, 5].eq(1).all()  # corners (x1, y1 exclusive)
    assert drawn[0, :, 5, 4].eq(0).all() and drawn[0, :, 0, 0].eq(0).all()


def test_small_inputs_are_enlarged_a_whole_number_of_times_and_large_ones_shrunk():
    assert tile_size(32, 32) == (96, 96)
    assert tile_size(28, 28) == (112, 112)
    assert tile_size(64, 48) == (128, 96)
    assert tile_size(150, 150) == (150, 150)
    assert tile_size(224, 224) == (192, 192)


def test_long_titles_wrap_between_words_or_after_an_underscore():
    assert _wrap("CAM on input", 1000, 9) == "CAM on input"
    assert _wrap("guided_backprop", _text_px("guided_", 9) + 1, 9) == "guided_\nbackprop"
    for line in _wrap("ABN map: the sigmoid output, not stretched", 80, 9).splitlines():
        assert _text_px(line, 9) <= 80


def attention_like_columns(rows: int = 8, size: int = 32) -> list[GridColumn]:
    images = torch.rand(rows, 3, size, size)
    maps = torch.rand(rows, 1, 8, 8)
    return [GridColumn("input + box", images=images), GridColumn("ABN map", maps=maps),
            GridColumn("ABN map on input", images=images, maps=maps),
            GridColumn("CAM (predicted class)", maps=maps[:, 0]), GridColumn("CAM on input", images=images, maps=maps[:, 0])]


def test_render_gives_an_rgb_tensor_large_enough_to_read():
    rendered = render_columns(attention_like_columns(), caption="ABN map: sigmoid output, not stretched.")
    assert rendered.dtype == torch.float32 and rendered.dim() == 3 and rendered.shape[0] == 3
    assert 0 <= rendered.min() and rendered.max() <= 1 and not rendered.isnan().any()
    height, width = rendered.shape[1:]
    assert height >= 8 * 96 and width >= 5 * 96  # 32-px inputs shown at 96 px
    assert height <= 1100 and width <= 800  # and still a sensible size on one screen


def test_tiles_are_placed_pixel_for_pixel_one_row_per_image_one_column_per_title():
    red = RED.expand(3, 3, 32, 32)
    for columns in (1, 2, 4):
        rendered = render_columns([GridColumn(f"column {k}", images=red) for k in range(columns)])
        assert count_colour(rendered, RED.view(3)) == 3 * columns * 96 * 96  # no blur, no resampling at the edges
    narrow = render_columns([GridColumn("a", images=red)])
    wide = render_columns([GridColumn(f"column {k}", images=red) for k in range(4)])
    assert wide.shape[2] - narrow.shape[2] == 3 * (96 + 6)  # a tile and a gap per extra column


def test_maps_bring_a_colour_bar_and_long_titles_a_taller_header():
    images = torch.rand(2, 3, 32, 32)
    plain = render_columns([GridColumn("input", images=images)])
    with_map = render_columns([GridColumn("input", images=images), GridColumn("map", maps=torch.rand(2, 32, 32))])
    assert with_map.shape[2] > plain.shape[2] + 96 + 6 + 40  # the map's column and the colour bar with its ticks
    bar = with_map[:, :, plain.shape[2] + 96 + 6:]  # right of the tiles: saturated colours are the colour bar's
    assert int((bar.amax(0) - bar.amin(0)).gt(0.5).sum()) >= 10 * (2 * 96 + 6) * 0.8
    long = render_columns([GridColumn("a title far too long for one line over a tile", images=images)])
    assert long.shape[1] > plain.shape[1] and long.shape[2] == plain.shape[2]


def test_a_constant_map_renders_flat_and_without_nan():
    rendered = render_columns([GridColumn("flat", maps=torch.full((2, 8, 8), 0.5)),
                               GridColumn("zero", maps=torch.zeros(2, 8, 8))])
    assert not rendered.isnan().any()
    assert count_colour(rendered, jet(0.5)) >= 2 * 96 * 96  # shown as it is: mid-scale, not stretched to 0 or 1
    assert count_colour(rendered, jet(0.0)) >= 2 * 96 * 96


def test_nan_and_inf_in_a_map_are_drawn_in_magenta_not_as_a_value_and_the_caption_says_so():
    """A diverged network's map must not pass for a flat one (nan was drawn as 0, inf as 1)."""
    maps = torch.stack([torch.full((8, 8), torch.nan), torch.full((8, 8), -torch.inf), torch.full((8, 8), 0.5)])
    magenta = torch.tensor(NON_FINITE_RGB)
    rgb = colorize(maps)
    assert torch.equal(rgb[0, :, 0, 0], magenta) and torch.equal(rgb[1, :, 0, 0], magenta)
    rendered = render_columns([GridColumn("map", maps=maps)])
    assert count_colour(rendered, magenta) == 2 * 96 * 96 and count_colour(rendered, jet(0.5)) >= 96 * 96
    finite = render_columns([GridColumn("map", maps=maps[2:].expand(3, -1, -1))])
    assert count_colour(finite, magenta) == 0  # not a colour of the colormap or its bar
    assert rendered.shape[1] > finite.shape[1]  # a caption line: what magenta means


def test_bad_columns_are_refused():
    with pytest.raises(ValueError, match="neither images nor maps"):
        GridColumn("empty")
    with pytest.raises(ValueError, match="same number of rows"):
        render_columns([GridColumn("a", images=torch.rand(2, 3, 8, 8)), GridColumn("b", maps=torch.rand(3, 8, 8))])


def live_figures() -> int:
    """Figures still held, garbage included: no gc.collect() here, each render must free its own at once."""
    return sum(type(thing) is Figure for thing in gc.get_objects())


def test_no_figure_stays_open_and_the_png_is_the_same_figure(tmp_path):
    gc.collect()
    before = live_figures()
    for _ in range(3):
        rendered = save_columns(attention_like_columns(rows=2), tmp_path / "grid.png", caption="scale")
    assert plt.get_fignums() == [] and live_figures() == before  # nothing left for every epoch's call to pile up
    with Image.open(tmp_path / "grid.png") as png:
        assert png.mode == "RGB" and png.size == (rendered.shape[2], rendered.shape[1])
        saved = torch.from_numpy(np.array(png)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(saved, rendered, atol=1 / 255, rtol=0)
