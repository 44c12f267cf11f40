"""Name → builder registry behind :func:`abn.models.create_model`."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from .network import HEADS, AttentionBranchNetwork, Backbone, build_network

TORCHVISION_PREFIX = "torchvision:"


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of an arch besides its builder."""

    builder: Callable[..., Backbone]  # (num_classes, in_chans, [pretrained], family options) → the parts
    input_size: int  # the native input size (32: CIFAR/SVHN, 224: ImageNet)
    pretrained: bool  # whether ``pretrained=True`` can load ImageNet weights


_MODELS: dict[str, ModelInfo] = {}


def register_model(name: str, input_size: int = 32, pretrained: bool = False) -> Callable:
    """Register a family builder under ``name``; it returns the backbone's :class:`Backbone` parts."""

    def add(builder: Callable[..., Backbone]) -> Callable[..., Backbone]:
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


# ``model.arch: null`` picks SMALL_ARCH (CIFAR size) for images whose longer side is at most SMALL_IMAGES pixels,
# LARGE_ARCH (ImageNet size, ImageNet weights available) for larger ones. A CIFAR-size network is worth a warning on
# images of LARGE_IMAGES px or more, an ImageNet one on SMALL_IMAGES or less.
SMALL_IMAGES, LARGE_IMAGES = 64, 128
SMALL_ARCH, LARGE_ARCH = "resnet20", "resnet18"
InputSize = Union[int, Sequence[int]]  # a side in pixels, or (height, width)


def longer_side(input_size: InputSize) -> int:
    return int(input_size) if isinstance(input_size, int) else max(int(side) for side in input_size)


def default_arch_for(input_size: InputSize) -> str:
    """The data's usual network (``model.arch: null``): resnet20 for images of at most 64 px, resnet18 above."""
    return SMALL_ARCH if longer_side(input_size) <= SMALL_IMAGES else LARGE_ARCH


def arch_size_note(arch: str, input_size: InputSize) -> Optional[str]:
    """A one-line warning when the registered ``arch`` was made for images of a very different size than the data's
    (a 32-px CIFAR network on 224-px images, or an ImageNet one on 32-px images); None when it fits, for
    ``torchvision:<name>`` (any size) and for names the registry does not know (building the model names those)."""
    if arch not in _MODELS:
        return None
    native = _MODELS[arch].input_size
    side = longer_side(input_size)
    size = f"{side}" if isinstance(input_size, int) else "×".join(str(int(s)) for s in input_size)
    if native <= SMALL_IMAGES and side >= LARGE_IMAGES:
        return (
            f"model.arch={arch} is a network for {native}-px (CIFAR-size) images and these are {size} px: its "
            f"attention map is {side / native:.3g}× as wide as at {native} px and each image costs about "
            f"{(side / native) ** 2:.0f}× as much; for {size}-px images use e.g. model.arch={LARGE_ARCH} or resnet50 "
            "(pretrained=true available)"
        )
    if native > SMALL_IMAGES and side <= SMALL_IMAGES:
        return (
            f"model.arch={arch} is an ImageNet network for {native}-px images and these are {size} px: its feature and "
            f"attention maps shrink {native / side:.3g}× per side from those at {native} px, to a few pixels; for "
            f"{size}-px images use e.g. model.arch={SMALL_ARCH} or resnet56"
        )
    return None


HEAD_OPTIONS = ("attention_mode", "map_kernel_size", "branch_depth", "task_chunk", "map_pooling", "map_activation", "task_head")


def family_builder(arch: str, pretrained: bool) -> Callable[..., Backbone]:
    """The builder of ``arch``'s parts, with a clear error for an unknown name or unavailable weights."""
    if arch.startswith(TORCHVISION_PREFIX):
        from .torchvision_abn import torchvision_backbone

        return functools.partial(torchvision_backbone, arch[len(TORCHVISION_PREFIX) :])
    info = model_info(arch)
    if pretrained and not info.pretrained:
        with_weights = [name for name, i in sorted(_MODELS.items()) if i.pretrained]
        raise ValueError(
            f"arch {arch!r} has no pretrained weights; pretrained=true applies to {', '.join(with_weights)} "
            "and to torchvision:<name>"
        )
    return info.builder


def family_options(builder: Callable[..., Backbone]) -> list[str]:
    """The options a family builder takes besides the class and channel counts (e.g. ``dropout``, ``split``)."""
    return [name for name in inspect.signature(builder).parameters if name not in ("num_classes", "in_chans", "pretrained")]


def create_model(
    arch: str, head: str = "abn", num_classes: int = 10, in_chans: int = 3, pretrained: bool = False, **kwargs
) -> AttentionBranchNetwork:
    """Build ``arch`` as a ``baseline``, ``cam``, ``abn`` or ``multitask`` network. Its own arguments are checked
    here, the head options by :func:`~abn.models.network.build_network`.

    ``arch`` is a registered name (:func:`list_models`) or ``torchvision:<name>`` with ``split=<module name>``
    (any torchvision CNN, cut after that module). Extra keyword arguments are the head options
    ``attention_mode="residual"|"multiply"`` (None: the head's own), ``map_kernel_size=3|1``,
    ``branch_depth="full"|"light"|n``, the multitask options ``task_chunk``, ``map_pooling``, ``map_activation``,
    ``task_head``, and the family's own options such as ``dropout`` or ``width``. For ``multitask``, ``num_classes``
    is the number of attributes.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid heads: {', '.join(HEADS)}")
    if num_classes < 1 or in_chans < 1:
        raise ValueError(f"num_classes and in_chans must be positive, got {num_classes} and {in_chans}")
    head_options = {key: kwargs.pop(key) for key in HEAD_OPTIONS if key in kwargs}
    builder = family_builder(arch, pretrained)
    valid = family_options(builder)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"{arch} has no option {', '.join(unknown)}; its options: {', '.join(valid + list(HEAD_OPTIONS))}"
        )
    if pretrained:
        kwargs["pretrained"] = True
    backbone = builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
    return build_network(backbone, head, num_classes, in_chans, **head_options)
