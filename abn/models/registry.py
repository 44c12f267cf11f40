"""Name → builder registry behind :func:`abn.models.create_model`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .network import HEADS
TORCHVISION_PREFIX = "torchvision:"


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of an arch besides its builder."""

    builder: Callable[..., nn.Module]
    input_size: int  # the native input size (32: CIFAR/SVHN, 224: ImageNet)
    pretrained: bool  # whether ``pretrained=True`` can load ImageNet weights


_MODELS: dict[str, ModelInfo] = {}


def register_model(name: str, input_size: int = 32, pretrained: bool = False) -> Callable:
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = ModelInfo(builder, input_size, pretrained)
        return builder

    return add


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted (plus any ``torchvision:<name>``)."""
    return sorted(_MODELS)


def model_info(arch: str) -> ModelInfo:
    if arch not in _MODELS:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(list_models())}, or torchvision:<name>")
    return _MODELS[arch]


def create_model(
    arch: str, head: str = "abn", num_classes: int = 10, in_chans: int = 3, pretrained: bool = False, **kwargs
) -> nn.Module:
    """Build ``arch`` as a ``baseline``, ``cam`` or ``abn`` network.

    ``arch`` is a registered name (:func:`list_models`) or ``torchvision:<name>`` with ``split=<module name>``
    (any torchvision CNN, cut after that module). Extra keyword arguments go to the builder:
    ``attention_mode="residual"|"multiply"``, ``map_kernel_size=3|1``, ``branch_depth="full"|"light"|n`` and
    family options such as ``dropout``.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid heads: {', '.join(HEADS)}")
    if num_classes < 1 or in_chans < 1:
        raise ValueError(f"num_classes and in_chans must be positive, got {num_classes} and {in_chans}")
    if arch.startswith(TORCHVISION_PREFIX):
        from .torchvision_abn import torchvision_abn

        name = arch[len(TORCHVISION_PREFIX) :]
        return torchvision_abn(name, head=head, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs)
    info = model_info(arch)
    if pretrained:
        if not info.pretrained:
            with_weights = [name for name, i in sorted(_MODELS.items()) if i.pretrained]
            raise ValueError(
                f"arch {arch!r} has no pretrained weights; pretrained=true applies to {', '.join(with_weights)} "
                "and to torchvision:<name>"
            )
        kwargs["pretrained"] = True
    return info.builder(head=head, num_classes=num_classes, in_chans=in_chans, **kwargs)
