"""Models: ``create_model(arch, head, num_classes, in_chans)`` builds any registered backbone as a
``baseline``, ``cam`` or ``abn`` network; every one returns :class:`ABNOutput`."""

from . import densenet, resnet_cifar, resnet_imagenet, resnext, vgg, wide_resnet  # noqa: F401  (each registers its archs)
from .network import ABNOutput, AttentionBranch, AttentionBranchNetwork, Backbone, GapLinearHead, build_network, resolve_branch_depth
from .registry import HEADS, ModelInfo, create_model, list_models, model_info, register_model

__all__ = [
    "ABNOutput",
    "AttentionBranch",
    "AttentionBranchNetwork",
    "Backbone",
    "GapLinearHead",
    "HEADS",
    "build_network",
    "ModelInfo",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
    "resolve_branch_depth",
]
