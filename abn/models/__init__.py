"""Models: ``create_model(arch, head, num_classes, in_chans)`` builds any registered backbone as a
``baseline``, ``cam`` or ``abn`` network; every one returns :class:`ABNOutput`."""

from . import resnet_cifar  # noqa: F401  (registers the CIFAR ResNets)
from .network import ABNOutput, AttentionBranch, AttentionBranchNetwork, GapLinearHead
from .registry import HEADS, create_model, list_models, register_model

__all__ = [
    "ABNOutput",
    "AttentionBranch",
    "AttentionBranchNetwork",
    "GapLinearHead",
    "HEADS",
    "create_model",
    "list_models",
    "register_model",
]
