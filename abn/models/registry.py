"""Name → builder registry behind :func:`abn.models.create_model`."""

from __future__ import annotations

from typing import Callable

from torch import nn

HEADS = ("baseline", "cam", "abn")
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return add


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_BUILDERS)


def create_model(arch: str, head: str = "abn", num_classes: int = 10, in_chans: int = 3, **kwargs) -> nn.Module:
    """Build ``arch`` as a ``baseline``, ``cam`` or ``abn`` network.

    Extra keyword arguments go to the builder (``attention_mode="residual"|"multiply"``, ``map_kernel_size=3|1``).
    """
    if arch not in _BUILDERS:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(list_models())}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid heads: {', '.join(HEADS)}")
    if num_classes < 1 or in_chans < 1:
        raise ValueError(f"num_classes and in_chans must be positive, got {num_classes} and {in_chans}")
    return _BUILDERS[arch](head=head, num_classes=num_classes, in_chans=in_chans, **kwargs)
