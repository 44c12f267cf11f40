"""ResNeXt-29 for 32×32 inputs (Xie et al. 2017) as baseline, CAM and ABN networks.

Three stages of bottleneck blocks with grouped 3×3 convolutions, output widths 256/512/1024 (``widen_factor`` 4
times 64/128/256), depth 9n+2. The inner width of a block is ``cardinality · out_channels / widen_factor``, as in
the official ABN code (8×64d: 8 groups of 64 channels in the first stage). The attention branch runs a stride-1
copy of the third stage (map 16×16 on 32×32 inputs). The official forward never applies the branch's first
BatchNorm although it builds it; the shared :class:`AttentionBranch` applies it (same parameter count).
"""

from __future__ import annotations

import functools
from collections import OrderedDict

from torch import Tensor, nn

from .network import Backbone, init_weights
from .registry import register_model
from .resnet_cifar import _shortcut


class ResNeXtBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, cardinality: int, widen_factor: int):
        super().__init__()
        inner = cardinality * out_channels // widen_factor
        self.conv1 = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)
        return self.relu(out)


def resnext_stage(in_channels: int, out_channels: int, num_blocks: int, stride: int, cardinality: int, widen_factor: int) -> nn.Sequential:
    blocks = [ResNeXtBlock(in_channels, out_channels, stride, cardinality, widen_factor)]
    blocks += [ResNeXtBlock(out_channels, out_channels, 1, cardinality, widen_factor) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def resnext(
    depth: int = 29,
    cardinality: int = 8,
    widen_factor: int = 4,
    base_channels: int = 64,
    num_classes: int = 10,
    in_chans: int = 3,
) -> Backbone:
    """``base_channels`` (64) is the stem width; stage widths are ``base_channels · widen_factor · (1, 2, 4)``."""
    if depth < 11 or (depth - 2) % 9:
        raise ValueError(f"ResNeXt depth must be 9n+2 with n ≥ 1 (e.g. 29), got {depth}")
    widths = [base_channels * widen_factor * m for m in (1, 2, 4)]
    if cardinality < 1 or widen_factor < 1 or base_channels * widen_factor < 1:
        raise ValueError(f"cardinality, widen_factor and base_channels must be positive, got {cardinality}, {widen_factor}, {base_channels}")
    n = (depth - 2) // 9

    def stage(in_channels: int, out_channels: int, num_blocks: int, stride: int) -> nn.Sequential:
        return resnext_stage(in_channels, out_channels, num_blocks, stride, cardinality, widen_factor)

    features = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_chans, base_channels, 3, padding=1, bias=False),
            bn1=nn.BatchNorm2d(base_channels),
            relu=nn.ReLU(inplace=True),
            stage1=stage(base_channels, widths[0], n, 1),
            stage2=stage(widths[0], widths[1], n, 2),
        )
    )
    return Backbone(
        features=features,
        last_stage=stage(widths[1], widths[2], n, 2),
        channels=widths[2],
        branch_stage=lambda blocks: stage(widths[1], widths[2], blocks, 1),
        num_blocks=n,
        initialise=init_weights,
    )


# ResNeXt-29 8×64d (34 M parameters as baseline, as in the ABN paper) and 16×64d (68 M)
register_model("resnext29_8x64d")(functools.partial(resnext, depth=29, cardinality=8))
register_model("resnext29_16x64d")(functools.partial(resnext, depth=29, cardinality=16))
