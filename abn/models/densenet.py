"""DenseNet-BC for 32×32 inputs (Huang et al. 2017) as baseline, CAM and ABN networks.

Layout of the official ABN code: conv → dense block 1 → transition → dense block 2 → transition → dense block 3
→ BN → ReLU → GAP → linear, with bottleneck dense layers (BN-ReLU-1×1 conv to 4k, BN-ReLU-3×3 conv to k) and
compression 0.5. The attention branch copies dense block 3, which has no down-sampling, so the map keeps the
8×8 resolution of its input (32×32 images). ``branch_depth`` counts dense layers.
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import torch
from torch import Tensor, nn

from .network import Backbone, init_weights
from .registry import register_model


class DenseLayer(nn.Module):
    """BN-ReLU-1×1 conv (4k) → BN-ReLU-3×3 conv (k); its k new channels are appended to the input."""

    def __init__(self, in_channels: int, growth_rate: int):
        super().__init__()
        inner = 4 * growth_rate
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, growth_rate, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return torch.cat((x, out), dim=1)


class Transition(nn.Sequential):
    """BN-ReLU-1×1 conv (compression) → 2×2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.AvgPool2d(2),
        )


def dense_block(in_channels: int, growth_rate: int, num_layers: int) -> nn.Sequential:
    return nn.Sequential(*[DenseLayer(in_channels + i * growth_rate, growth_rate) for i in range(num_layers)])


def densenet_bc(depth: int = 100, growth_rate: int = 12, num_classes: int = 10, in_chans: int = 3) -> Backbone:
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"DenseNet-BC depth must be 6n+4 with n ≥ 1 (e.g. 40, 100, 190), got {depth}")
    layers = (depth - 4) // 6
    channels = 2 * growth_rate
    parts: OrderedDict[str, nn.Module] = OrderedDict(conv1=nn.Conv2d(in_chans, channels, 3, padding=1, bias=False))
    for i in (1, 2):
        parts[f"dense{i}"] = dense_block(channels, growth_rate, layers)
        channels += layers * growth_rate
        parts[f"trans{i}"] = Transition(channels, channels // 2)
        channels //= 2
    out_channels = channels + layers * growth_rate
    last_stage = nn.Sequential(
        OrderedDict(dense3=dense_block(channels, growth_rate, layers), bn=nn.BatchNorm2d(out_channels), relu=nn.ReLU(inplace=True))
    )
    return Backbone(
        features=nn.Sequential(parts),
        last_stage=last_stage,
        channels=out_channels,
        branch_stage=lambda copied: dense_block(channels, growth_rate, copied),
        num_blocks=layers,
        branch_channels=lambda copied: channels + copied * growth_rate,  # each dense layer adds growth_rate
        initialise=init_weights,
    )


# DenseNet-BC with L=100, k=12 (0.8 M parameters as baseline), as in the ABN paper
register_model("densenet_bc100")(functools.partial(densenet_bc, depth=100, growth_rate=12))
