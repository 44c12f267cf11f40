"""``explain(model, images, method)``: every explanation method behind one call, computed the same way."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..models.network import MultiTaskNetwork
from .layers import AttributeView, check_layers, check_targets, default_layer, unwrap
from .methods import METHOD_SPECS, MapRequest, MethodSpec, to_input_size
from .state import preserved_state

METHODS = tuple(METHOD_SPECS)
LAYER_METHODS = tuple(name for name, spec in METHOD_SPECS.items() if spec.takes_layer)
DIFFERENTIABLE_METHODS = tuple(name for name, spec in METHOD_SPECS.items() if spec.differentiable)

Layers = Union[None, str, Sequence[str]]


def applicable_methods(model: nn.Module) -> list[str]:
    """The methods that apply to ``model``: ``abn`` needs an attention branch, ``cam`` a GAP + linear head (or the
    multi-task head)."""
    net = unwrap(model)
    return [name for name, spec in METHOD_SPECS.items() if spec.applies_to(net)]


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max scale each map to [0, 1]; a constant map becomes zeros (never NaN). Negative values (the raw maps of
    a multi-task ABN, a CAM) are scaled like any other: the map's minimum becomes 0."""
    flat = maps.flatten(1)
    low = flat.amin(dim=1).view(-1, *([1] * (maps.dim() - 1)))
    span = flat.amax(dim=1).view_as(low) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(maps))


def method_spec(net: nn.Module, method: str, layer: Layers, differentiable: bool) -> MethodSpec:
    """The method's spec, once the method is known, applies to ``net`` and supports the options asked for."""
    if method not in METHOD_SPECS:
        raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    spec = METHOD_SPECS[method]
    if not spec.applies_to(net):
        raise ValueError(f"method {method!r} does not apply to this {type(net).__name__}: it needs {spec.requirement}. "
                         f"Methods that apply: {', '.join(applicable_methods(net))}")
    if differentiable and not spec.differentiable:
        raise ValueError(f"differentiable=True applies to {', '.join(DIFFERENTIABLE_METHODS)}, not {method!r}")
    if layer is not None and not spec.takes_layer:
        raise ValueError(f"method {method!r} takes no layer (it explains {'the input' if spec.input_attribution else 'the whole image'}); "
                         f"layer applies to {', '.join(LAYER_METHODS)}")
    return spec


def layer_names(net: nn.Module, images: Tensor, spec: MethodSpec, layer: Layers) -> list[str]:
    """The checked layer names to explain at (each once): the default layer when ``layer`` is None."""
    if not spec.takes_layer:
        return []
    if layer is None:
        return [default_layer(net, images)]
    layers = [layer] if isinstance(layer, str) else list(dict.fromkeys(layer))
    if not layers:
        raise ValueError("layer is an empty list; give at least one layer name, or None for the default")
    check_layers(net, layers, images)
    return layers


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
    multilabel: Optional[bool] = None,
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

    Multi-label models (one logit per attribute): a target is an attribute index, and every method explains that
    attribute's logit (default target: the attribute with the highest logit). ``multilabel`` (None: a multi-task ABN,
    or an :class:`~abn.module.ABNModule` trained with ``task=multilabel``) makes Relevance-CAM start from the target
    attribute alone instead of contrasting it with the others, which are not competing classes. On a multi-task ABN
    ``abn`` gives the target attribute's own map, ``cam`` and the layer methods work on the last stage's output on
    g·M^t (the attribute's own features), see :class:`~abn.explain.layers.AttributeView`.
    """
    net = unwrap(model)
    spec = method_spec(net, method, layer, differentiable)
    if not torch.is_tensor(images) or images.dim() != 4:
        raise ValueError(f"images must be a B×C×H×W tensor, got {tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
    multilabel = is_multilabel(model, multilabel)
    device = next(iter(net.parameters()), torch.empty(0)).device
    several = isinstance(layer, (list, tuple))
    with torch.inference_mode(False), torch.enable_grad():
        images = images.to(device)
        if images.is_inference():
            images = images.clone()
        with preserved_state(net, eval_mode=not differentiable, freeze=not differentiable):
            layers = layer_names(net, images, spec, layer)
            subject, targets = explained_network(net, images, targets, multilabel)
            request = MapRequest(subject, images, targets, layers, differentiable, interpolation, seed, multilabel)
            raw_maps = spec.compute(request)
    if not differentiable:
        raw_maps = {name: maps.detach() for name, maps in raw_maps.items()}
    if not raw:
        size = tuple(images.shape[-2:])
        raw_maps = {name: normalize_maps(_reduce_channels(maps) if maps.dim() == 4 else to_input_size(maps, size, interpolation))
                    for name, maps in raw_maps.items()}
    return raw_maps if several else next(iter(raw_maps.values()))


def is_multilabel(model: nn.Module, multilabel: Optional[bool]) -> bool:
    """``multilabel`` as given, else inferred: a multi-task ABN, or a module whose ``hparams.task`` is multilabel."""
    multitask = isinstance(unwrap(model), MultiTaskNetwork)
    if multilabel is None:
        hparams = getattr(model, "hparams", None)
        return multitask or (hparams is not None and hparams.get("task") == "multilabel")
    if multitask and not multilabel:
        raise ValueError("multilabel=False does not fit a multi-task ABN: its outputs are attributes, one logit each; "
                         "leave multilabel out (None)")
    return bool(multilabel)


def explained_network(net: nn.Module, images: Tensor, targets: Optional[object],
                      multilabel: bool) -> tuple[nn.Module, Optional[object]]:
    """The network the methods run on and the targets they get: a multi-task ABN becomes an :class:`AttributeView` of
    each image's target attribute (the prediction when None: the highest logit), with target 0, its one output."""
    if not isinstance(net, MultiTaskNetwork):
        if multilabel and targets is not None and isinstance(getattr(net, "num_classes", None), int):
            check_targets(targets, len(images), net.num_classes, images.device, "attribute")
        return net, targets
    if targets is None:
        with torch.no_grad():
            chosen = net(images).logits.argmax(dim=1)
    else:
        chosen = check_targets(targets, len(images), net.num_classes, images.device, "attribute")
    return AttributeView(net, chosen), torch.zeros_like(chosen)


def _reduce_channels(attribution: Tensor) -> Tensor:
    return attribution.abs().amax(dim=1)
