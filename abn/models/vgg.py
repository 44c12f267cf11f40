"""VGG-16/19 (with and without BatchNorm) as baseline, CAM and ABN networks; CIFAR-size and ImageNet-size.

The official ABN code has no VGG; we follow the paper: the network is cut before pool4, the attention branch is
built from the convolutions of the stage it replaces (conv5_1..conv5_3 without the pools, so the map keeps
conv4_3's resolution: 28×28 at 224, 4×4 at 32), and the perception branch is pool4 + stage 5 + pool5 + the
baseline's own classifier. ``branch_depth`` counts stage-5 convolutions.

The ``cam`` head is the CAM paper's VGG-GAP: pool5 and the fully connected layers are replaced by a 3×3
convolution to 1024 channels + ReLU, then GAP + linear.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .network import (
    AttentionBranch, AttentionBranchNetwork, BranchDepth, GapLinearHead, assemble, init_weights, resolve_branch_depth,
    stride_one_copy,
)
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
    conv_stack: nn.Sequential,
    classifier: nn.Module,
    head: str,
    num_classes: int,
    in_chans: int,
    attention_mode: str,
    map_kernel_size: int,
    branch_depth: BranchDepth,
) -> AttentionBranchNetwork:
    pools = [i for i, layer in enumerate(conv_stack) if isinstance(layer, nn.MaxPool2d)]
    if len(pools) != 5:
        raise ValueError(f"a VGG has five max-pools, this layer stack has {len(pools)}")
    pool4, pool5 = pools[3], pools[4]
    stage5 = conv_stack[pool4 + 1 : pool5]
    channels = [m for m in stage5 if isinstance(m, nn.Conv2d)][-1].out_channels
    features = conv_stack[:pool4]
    features[0] = adapt_first_conv(features[0], in_chans)
    branch = None
    if head == "cam":
        extra = nn.Sequential(nn.Conv2d(channels, 1024, 3, padding=1), nn.ReLU(inplace=True))
        init_weights(extra)
        last_stage = nn.Sequential(OrderedDict(pool4=conv_stack[pool4], stage5=stage5, cam_conv=extra))
        classifier = GapLinearHead(1024, num_classes)
    else:
        last_stage = nn.Sequential(OrderedDict(pool4=conv_stack[pool4], stage5=stage5, pool5=conv_stack[pool5]))
    if head == "abn":
        units = conv_units(stage5)
        kept = units[: resolve_branch_depth(branch_depth, len(units))]
        stage_copy = stride_one_copy(nn.Sequential(*[layer for unit in kept for layer in unit]))
        branch = AttentionBranch(stage_copy, channels, num_classes, map_kernel_size)
        branch.init_new_layers()
    return assemble(head, features, last_stage, classifier, num_classes, in_chans, attention_mode, branch)


@register_model("vgg16_bn_cifar")
def vgg16_bn_cifar(
    head: str = "abn",
    num_classes: int = 10,
    in_chans: int = 3,
    attention_mode: str = "residual",
    map_kernel_size: int = 3,
    branch_depth: BranchDepth = "full",
    width: int = 64,
) -> AttentionBranchNetwork:
    """VGG-16 with BatchNorm for 32×32 inputs; the baseline head is GAP + linear (pool5 leaves 1×1).

    ``width`` scales every layer (64 is the standard network)."""
    layout = tuple(item if item == "M" else item * width // 64 for item in VGG16_LAYOUT)
    conv_stack = conv_layers(layout, 3, batch_norm=True)
    init_weights(conv_stack)
    return split_vgg(
        conv_stack, GapLinearHead(layout[-2], num_classes), head, num_classes, in_chans, attention_mode, map_kernel_size, branch_depth
    )


def imagenet_vgg(
    name: str,
    head: str = "abn",
    num_classes: int = 1000,
    in_chans: int = 3,
    pretrained: bool = False,
    attention_mode: str = "residual",
    map_kernel_size: int = 3,
    branch_depth: BranchDepth = "full",
) -> AttentionBranchNetwork:
    net = torchvision_model(name, pretrained)
    last = net.classifier[-1]
    if last.out_features != num_classes:
        net.classifier[-1] = nn.Linear(last.in_features, num_classes)
    classifier = nn.Sequential(OrderedDict(avgpool=net.avgpool, flatten=nn.Flatten(1), classifier=net.classifier))
    return split_vgg(net.features, classifier, head, num_classes, in_chans, attention_mode, map_kernel_size, branch_depth)


def _register(name: str) -> None:
    def build(**kwargs) -> AttentionBranchNetwork:
        return imagenet_vgg(name, **kwargs)

    build.__doc__ = f"torchvision's {name} split before pool4 (pretrained=True loads its ImageNet weights)."
    register_model(name, input_size=224, pretrained=True)(build)


for _name in ("vgg16", "vgg16_bn", "vgg19", "vgg19_bn"):
    _register(_name)
