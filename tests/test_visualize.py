"""Overlays and grids: maps shown as they are, de-normalised inputs, boxes drawn where given."""

from __future__ import annotations

import matplotlib
import torch

from abn.visualize import colorize, draw_boxes, overlay, scale_by_max, side_by_side


def test_colorize_uses_the_colormap_without_stretching():
    flat = torch.full((1, 4, 4), 0.2)
    rgb = colorize(flat, "jet")
    expected = torch.tensor(matplotlib.colormaps["jet"](round(0.2 * 255) / 255)[:3], dtype=torch.float32)
    torch.testing.assert_close(rgb[0, :, 0, 0], expected, atol=1e-6, rtol=0)
    assert torch.equal(rgb, rgb[:, :, :1, :1].expand_as(rgb))  # a flat map stays flat


def test_overlay_upsamples_and_blends():
    images = torch.zeros(2, 1, 8, 8)
    maps = torch.ones(2, 1, 2, 2)
    out = overlay(images, maps, "gray", alpha=0.25)
    assert out.shape == (2, 3, 8, 8)
    torch.testing.assert_close(out, torch.full_like(out, 0.25))


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


def test_side_by_side_puts_one_image_per_row():
    columns = [torch.zeros(4, 3, 8, 8), torch.ones(4, 1, 8, 8)]
    grid = side_by_side(columns, padding=2)
    assert grid.shape == (3, 4 * 10 + 2, 2 * 10 + 2)
