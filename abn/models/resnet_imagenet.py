"""ImageNet ResNet-18/34/50/101/152 (torchvision's classes) as baseline, CAM and ABN networks.

The split of the official ABN code: features = stem + layer1..layer3; the attention branch runs a stride-1 copy of
layer4 (a 14×14 map on 224×224 inputs); the perception branch is layer4 + GAP + fc. The branch's copy is taken after
torchvision's weights are loaded, so ``pretrained=True`` starts the shared layers, layer4 *and* its copy from the
ImageNet weights (the official code's pretrained path fails: it loads strictly without the branch's keys).
"""

from __future__ import annotations

import functools
from collections import OrderedDict

from torch import nn

from .network import Backbone, GapLinearHead, stride_one_copy
from .pretrained import adapt_first_conv, torchvision_model
from .registry import register_model


def imagenet_resnet(name: str, num_classes: int = 1000, in_chans: int = 3, pretrained: bool = False) -> Backbone:
    """torchvision's ``name`` split before layer4 (``pretrained=True`` loads its ImageNet weights)."""
    net = torchvision_model(name, pretrained)
    features = nn.Sequential(
        OrderedDict(
            conv1=adapt_first_conv(net.conv1, in_chans),
            bn1=net.bn1,
            relu=net.relu,
            maxpool=net.maxpool,
            layer1=net.layer1,
            layer2=net.layer2,
            layer3=net.layer3,
        )
    )
    channels = net.fc.in_features
    classifier = GapLinearHead(channels, num_classes)
    if num_classes == net.fc.out_features:
        classifier.fc = net.fc
    return Backbone(
        features=features,
        last_stage=net.layer4,
        channels=channels,
        branch_stage=lambda blocks: stride_one_copy(net.layer4[:blocks]),  # copied after the weights are loaded
        num_blocks=len(net.layer4),
        gap_linear=classifier,
    )


for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    register_model(_name, input_size=224, pretrained=True)(functools.partial(imagenet_resnet, _name))
