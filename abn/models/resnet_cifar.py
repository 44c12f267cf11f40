"""CIFAR-style ResNets (three stages of 16/32/64 planes) as baseline, CAM and ABN networks.

Two layouts share this file:

* ``resnet20`` … ``resnet110``: He et al. (2016) basic-block networks, depth = 6n + 2.
* ``resnet110_bottleneck``: what the official ABN code calls "ResNet-110" — it switches to bottleneck blocks for
  depth ≥ 44 while keeping n = (depth − 2) / 6, so it has 18 bottleneck blocks per stage (the 164-layer layout,
  about 1.7 M parameters). The CIFAR numbers of the ABN paper come from this network.

Shortcuts that change shape are 1×1 conv + BN (as in the official ABN code). The ABN split is before the third
stage: the attention branch runs a stride-1 copy of it, so a 32×32 input gives a 16×16 map.
``branch_depth="light"`` copies only the stage's first block.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Type, Union

from torch import Tensor, nn

from .network import Backbone, init_weights
from .registry import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)  # in place, as torchvision and the official code: less memory traffic
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)
        return self.relu(out)


Block = Type[Union[BasicBlock, Bottleneck]]


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


def make_stage(block: Block, in_planes: int, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
    blocks = [block(in_planes, planes, stride)]
    blocks += [block(planes * block.expansion, planes) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def cifar_resnet(block: Block, blocks_per_stage: int, num_classes: int = 10, in_chans: int = 3) -> Backbone:
    e = block.expansion
    features = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_chans, 16, 3, padding=1, bias=False),
            bn1=nn.BatchNorm2d(16),
            relu=nn.ReLU(inplace=True),
            layer1=make_stage(block, 16, 16, blocks_per_stage, stride=1),
            layer2=make_stage(block, 16 * e, 32, blocks_per_stage, stride=2),
        )
    )
    return Backbone(
        features=features,
        last_stage=make_stage(block, 32 * e, 64, blocks_per_stage, stride=2),
        channels=64 * e,
        branch_stage=lambda blocks: make_stage(block, 32 * e, 64, blocks, stride=1),
        num_blocks=blocks_per_stage,
        initialise=init_weights,
    )


# He et al.'s basic-block ResNets for CIFAR, depth 6n + 2
for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}")(functools.partial(cifar_resnet, BasicBlock, (_depth - 2) // 6))

# the official ABN code's "ResNet-110": 18 bottleneck blocks per stage (the 164-layer layout)
register_model("resnet110_bottleneck")(functools.partial(cifar_resnet, Bottleneck, 18))
