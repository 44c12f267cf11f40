"""Wide ResNets for 32×32 inputs (Zagoruyko & Komodakis 2016) as baseline, CAM and ABN networks.

Pre-activation basic blocks (BN-ReLU-conv twice, dropout between the convolutions), widths 16k/32k/64k, depth
6n+4. As in the official ABN code the split is before the third group: the attention branch runs a stride-1 copy
of it (map 16×16 on 32×32 inputs); the perception branch ends with BN → ReLU → GAP → linear.
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from .network import Backbone, init_weights
from .registry import register_model


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = dropout
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        # a projection shortcut reads the pre-activated input, an identity shortcut the input itself
        residual = x if self.shortcut is None else self.shortcut(pre)
        out = self.relu(self.bn2(self.conv1(pre)))
        out = self.conv2(F.dropout(out, p=self.dropout, training=self.training))
        out += residual
        return out


def wide_group(in_planes: int, planes: int, num_blocks: int, stride: int, dropout: float) -> nn.Sequential:
    blocks = [WideBlock(in_planes, planes, stride, dropout)]
    blocks += [WideBlock(planes, planes, 1, dropout) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def init_wide_resnet(network: nn.Module) -> None:
    """He-normal convolutions, unit BatchNorm and a zero classifier bias, as the official code initialises."""
    init_weights(network)
    classifier = network.head.fc if hasattr(network.head, "fc") else network.head  # multitask: the TaskHeads
    nn.init.zeros_(classifier.bias)


def wide_resnet(
    depth: int = 28, widen_factor: int = 10, dropout: float = 0.3, num_classes: int = 10, in_chans: int = 3
) -> Backbone:
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"Wide ResNet depth must be 6n+4 with n ≥ 1 (e.g. 16, 28, 40), got {depth}")
    if widen_factor < 1 or not 0 <= dropout < 1:
        raise ValueError(f"widen_factor must be ≥ 1 and dropout in [0, 1), got {widen_factor} and {dropout}")
    n = (depth - 4) // 6
    widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    features = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_chans, 16, 3, padding=1, bias=False),
            block1=wide_group(16, widths[0], n, 1, dropout),
            block2=wide_group(widths[0], widths[1], n, 2, dropout),
        )
    )
    last_stage = nn.Sequential(
        OrderedDict(block3=wide_group(widths[1], widths[2], n, 2, dropout), bn=nn.BatchNorm2d(widths[2]), relu=nn.ReLU(inplace=True))
    )
    return Backbone(
        features=features,
        last_stage=last_stage,
        channels=widths[2],
        branch_stage=lambda blocks: wide_group(widths[1], widths[2], blocks, 1, dropout),
        num_blocks=n,
        initialise=init_wide_resnet,
    )


# WRN-depth-k with dropout 0.3 (change with dropout=…)
for _depth, _width in ((16, 8), (28, 10), (40, 4)):
    register_model(f"wrn{_depth}_{_width}")(functools.partial(wide_resnet, depth=_depth, widen_factor=_width, dropout=0.3))
