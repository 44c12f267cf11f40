"""VGG-16/19 (with and without BatchNorm) as baseline, CAM and ABN networks; CIFAR-size and ImageNet-size.

The official ABN code has no VGG; we follow the paper: the network is cut before pool4, the attention branch is
built from the convolutions of the stage it replaces (conv5_1..conv5_3 without the pools, so the map keeps
conv4_3's resolution: 28×28 at 224, 4×4 at 32), and the perception branch is pool4 + stage 5 + pool5 + the
baseline's own classifier. ``branch_depth`` counts stage-5 convolutions.

The ``cam`` head is the CAM paper's VGG-GAP: pool5 and the fully connected layers are replaced by a 3×3
convolution to 1024 channels + ReLU, then GAP + linear.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Optional

from torch import nn

from .network import Backbone, GapLinearHead, init_weights, stride_one_copy
from .pretrained import adapt_first_conv, torchvision_model
from .registry import register_model

VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def conv_layers(layout, in_chans: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for item in layout:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers.append(nn.Conv2d(in_chans, item, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(item))
        layers.append(nn.ReLU(inplace=True))
        in_chans = item
    return nn.Sequential(*layers)


def conv_units(layers: nn.Sequential) -> list[list[nn.Module]]:
    """Group a run of layers into conv(+BN)+ReLU units."""
    units: list[list[nn.Module]] = []
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            units.append([])
        if units and not isinstance(layer, nn.MaxPool2d):
            units[-1].append(layer)
    return units


def split_vgg(
    conv_stack: nn.Sequential, in_chans: int, classifier: Optional[nn.Module] = None, gap_linear: Optional[GapLinearHead] = None
) -> Backbone:
    """The parts of a VGG cut before pool4 with the baseline's classifier: ``classifier`` (fully connected layers)
    or ``gap_linear``."""
    pools = [i for i, layer in enumerate(conv_stack) if isinstance(layer, nn.MaxPool2d)]
    if len(pools) != 5:
        raise ValueError(f"a VGG has five max-pools, this layer stack has {len(pools)}")
    pool4, pool5 = pools[3], pools[4]
    stage5 = conv_stack[pool4 + 1 : pool5]
    channels = [m for m in stage5 if isinstance(m, nn.Conv2d)][-1].out_channels
    features = conv_stack[:pool4]
    features[0] = adapt_first_conv(features[0], in_chans)
    units = conv_units(stage5)

    def branch_stage(kept: int) -> nn.Module:
        return stride_one_copy(nn.Sequential(*[layer for unit in units[:kept] for layer in unit]))

    def vgg_gap_stage() -> tuple[nn.Module, int]:
        """The CAM paper's VGG-GAP: pool5 replaced by a 3×3 convolution to 1024 channels + ReLU."""
        extra = nn.Sequential(nn.Conv2d(channels, 1024, 3, padding=1), nn.ReLU(inplace=True))
        init_weights(extra)
        return nn.Sequential(OrderedDict(pool4=conv_stack[pool4], stage5=stage5, cam_conv=extra)), 1024

    return Backbone(
        features=features,
        last_stage=nn.Sequential(OrderedDict(pool4=conv_stack[pool4], stage5=stage5, pool5=conv_stack[pool5])),
        channels=channels,
        branch_stage=branch_stage,
        num_blocks=len(units),
        classifier=(lambda: classifier) if classifier is not None else None,
        gap_linear=gap_linear,
        cam_stage=vgg_gap_stage,
    )


@register_model("vgg16_bn_cifar")
def vgg16_bn_cifar(num_classes: int = 10, in_chans: int = 3, width: int = 64) -> Backbone:
    """VGG-16 with BatchNorm for 32×32 inputs; the baseline head is GAP + linear (pool5 leaves 1×1).

    ``width`` scales every layer (64 is the standard network)."""
    layout = tuple(item if item == "M" else item * width // 64 for item in VGG16_LAYOUT)
    conv_stack = conv_layers(layout, 3, batch_norm=True)
    init_weights(conv_stack)
    return split_vgg(conv_stack, in_chans, gap_linear=GapLinearHead(layout[-2], num_classes))


def imagenet_vgg(name: str, num_classes: int = 1000, in_chans: int = 3, pretrained: bool = False) -> Backbone:
    """torchvision's ``name`` split before pool4 (``pretrained=True`` loads its ImageNet weights)."""
    net = torchvision_model(name, pretrained)
    last = net.classifier[-1]
    if last.out_features != num_classes:
        net.classifier[-1] = nn.Linear(last.in_features, num_classes)
    classifier = nn.Sequential(OrderedDict(avgpool=net.avgpool, flatten=nn.Flatten(1), classifier=net.classifier))
    return split_vgg(net.features, in_chans, classifier)


for _name in ("vgg16", "vgg16_bn", "vgg19", "vgg19_bn"):
    register_model(_name, input_size=224, pretrained=True)(functools.partial(imagenet_vgg, _name))
