"""``explain(model, images, method)``: every explanation method behind one call, computed the same way."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import methods as m
from .layers import cam_layer, check_layers, default_layer, unwrap
from .state import preserved_state

METHODS = ("abn", "cam", "gradcam", "gradcam++", "guided_backprop", "guided_gradcam", "counterfactual",
           "relevance_cam", "random")
LAYER_METHODS = ("cam", "gradcam", "gradcam++", "guided_gradcam", "counterfactual", "relevance_cam")
DIFFERENTIABLE_METHODS = ("abn", "cam", "gradcam", "gradcam++", "counterfactual")
INPUT_GRADIENT_METHODS = ("guided_backprop", "guided_gradcam")

Layers = Union[None, str, Sequence[str]]


def has_attention_branch(model: nn.Module) -> bool:
    return getattr(unwrap(model), "attention_branch", None) is not None


def applicable_methods(model: nn.Module) -> list[str]:
    """The methods that apply to ``model``: ``abn`` needs an attention branch, ``cam`` a GAP + linear head."""
    net = unwrap(model)
    return [method for method in METHODS
            if (method != "abn" or has_attention_branch(net)) and (method != "cam" or cam_layer(net) is not None)]


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max scale each map to [0, 1]; a constant map becomes zeros (never NaN)."""
    flat = maps.flatten(1)
    low = flat.amin(dim=1).view(-1, *([1] * (maps.dim() - 1)))
    span = flat.amax(dim=1).view_as(low) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(maps))


def to_input_size(maps: Tensor, size: tuple[int, int], interpolation: str) -> Tensor:
    if maps.shape[-2:] == size:
        return maps
    extra = {"align_corners": False} if interpolation in ("bilinear", "bicubic") else {}
    return F.interpolate(maps[:, None], size=size, mode=interpolation, **extra)[:, 0]


def explain(
    model: nn.Module,
    images: Tensor,
    method: str,
    targets: Optional[object] = None,
    layer: Layers = None,
    *,
    raw: bool = False,
    differentiable: bool = False,
    interpolation: str = "bilinear",
    seed: int = 0,
) -> Union[Tensor, dict[str, Tensor]]:
    """Explain ``model``'s decision on a batch of ``images`` (B×C×H×W, as the model takes them) with ``method``.

    ``model``: a network of :mod:`abn.models`, an :class:`abn.module.ABNModule`, or any CNN returning class scores.
    ``targets``: the class to explain per image (a B-tensor or one int); default: the predicted class.
    ``layer``: a module name (``model.named_modules()``), several names (a list: the result is then a dict layer →
    maps), or None for the feature map that feeds the classifier (``last_stage`` of the ABN networks, ``layer4`` of a
    torchvision ResNet). ``abn``, ``guided_backprop`` and ``random`` take no layer.

    Returns maps on the images' device, B×H×W at input resolution, each min-max scaled to [0, 1] (a constant map
    gives zeros), upsampled with ``interpolation``. ``raw=True`` returns them unscaled at the layer's resolution
    (B×h×w), and for ``guided_backprop`` / ``guided_gradcam`` the signed B×C×H×W input attribution; otherwise
    those two are reduced to the largest absolute value over channels.

    The gradient methods differentiate from the class score down to the layer only. The model is left as it was
    found: train/eval flags, ``requires_grad``, ``.grad`` and hooks (it runs in eval mode meanwhile).
    ``differentiable=True`` (``abn``, ``cam``, ``gradcam``, ``gradcam++``, ``counterfactual``) keeps the maps in the
    autograd graph instead, for losses on the maps: the model then runs in the mode it is in, with its parameters'
    ``requires_grad`` untouched. ``random`` draws uniform noise from ``seed``: the sanity baseline.
    """
    net = unwrap(model)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    if method not in applicable_methods(net):
        why = "it needs an attention branch (head=abn)" if method == "abn" else "it needs a GAP + linear head"
        raise ValueError(f"method {method!r} does not apply to this {type(net).__name__}: {why}. "
                         f"Methods that apply: {', '.join(applicable_methods(net))}")
    if differentiable and method not in DIFFERENTIABLE_METHODS:
        raise ValueError(f"differentiable=True applies to {', '.join(DIFFERENTIABLE_METHODS)}, not {method!r}")
    if not torch.is_tensor(images) or images.dim() != 4:
        raise ValueError(f"images must be a B×C×H×W tensor, got {tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
    if layer is not None and method not in LAYER_METHODS:
        raise ValueError(f"method {method!r} takes no layer (it explains {'the input' if method in INPUT_GRADIENT_METHODS else 'the whole image'}); "
                         f"layer applies to {', '.join(LAYER_METHODS)}")
    device = next(iter(net.parameters()), torch.empty(0)).device
    several = isinstance(layer, (list, tuple))
    with torch.inference_mode(False), torch.enable_grad():
        images = images.to(device)
        if images.is_inference():
            images = images.clone()
        with preserved_state(net, eval_mode=not differentiable, freeze=not differentiable):
            raw_maps = _raw_maps(net, images, method, targets, layer, differentiable, interpolation, seed)
    if not differentiable:
        raw_maps = {name: maps.detach() for name, maps in raw_maps.items()}
    if not raw:
        size = tuple(images.shape[-2:])
        raw_maps = {name: normalize_maps(_reduce_channels(maps) if maps.dim() == 4 else to_input_size(maps, size, interpolation))
                    for name, maps in raw_maps.items()}
    return raw_maps if several else next(iter(raw_maps.values()))


def _reduce_channels(attribution: Tensor) -> Tensor:
    return attribution.abs().amax(dim=1)


def _raw_maps(net: nn.Module, images: Tensor, method: str, targets: Optional[object], layer: Layers,
              differentiable: bool, interpolation: str, seed: int) -> dict[str, Tensor]:
    if method == "abn":
        return {"attention": m.attention_map(net, images, targets)}
    if method == "random":
        generator = torch.Generator().manual_seed(seed)
        return {"random": torch.rand(images.shape[0], *images.shape[-2:], generator=generator).to(images.device)}
    if method == "guided_backprop":
        return {"input": m.guided_backprop(net, images, targets)}
    if layer is None:
        layers = [cam_layer(net)[0] if method == "cam" else default_layer(net, images)]
    else:
        layers = [layer] if isinstance(layer, str) else list(layer)
        if not layers:
            raise ValueError("layer is an empty list; give at least one layer name, or None for the default")
        check_layers(net, layers, images)
    if method == "cam":
        return m.class_activation_map(net, images, layers, targets, differentiable)
    if method in ("gradcam", "gradcam++", "counterfactual"):
        return m.gradient_cams(net, images, method, layers, targets, differentiable)
    if method == "relevance_cam":
        return m.relevance_cams(net, images, layers, targets)
    # guided_gradcam: guided backprop × Grad-CAM up-sampled to the input (Selvaraju et al.)
    cams = m.gradient_cams(net, images, "gradcam", layers, targets, differentiable=False)
    guided = m.guided_backprop(net, images, targets)
    size = tuple(images.shape[-2:])
    return {name: guided * to_input_size(cam, size, interpolation)[:, None] for name, cam in cams.items()}
