"""Relevance-CAM (Lee et al., CVPR 2021): layer-wise relevance propagation down to chosen layers, done with hooks
and autograd on the model as it is (no rewritten copy of the network).

How relevance is computed
-------------------------
Relevance is kept in the "gradient × input" form: for every tensor ``a`` of the network, ``R_a = a ⊙ g_a``, where
``g_a`` is a *modified* gradient of the start signal. Plain autograd then already applies the z rule wherever the
rule's denominator is the op's own output: an element-wise ReLU passes relevance through, max-pooling gives it all
to the winner, and an addition that is not a module (the residual ``out += shortcut(x)``) splits it in proportion
to each summand's contribution, ``R_a = a / (a + b) · R``.

Where the rule differs from the plain gradient, a forward hook replaces the module's output ``y`` by

    y + (z − z.detach()) · (y / stabilise(z)).detach()

whose value is exactly ``y`` and whose gradient is that of ``z`` scaled by ``y / z``. With ``R_out = y ⊙ g_out``
the module's input then receives ``R_in = x ⊙ ∂z/∂x · R_out / z``: the rule whose contributions are ``z``'s terms.

* ``nn.Conv1d/2d/3d``, ``nn.Linear`` and the attribute head of a multi-task ABN
  (:class:`~abn.explain.layers.TargetHead`: the 2-way head's logit z₁ − z₀ as one linear unit, weight w₁ − w₀):
  z⁺ rule (α1β0), ``z = layer(x⁺, W⁺) + layer(x⁻, W⁻)``; the bias is left out, so the relevance is conserved;
* average pooling (positive weights): ``z = pool(x⁺)``;
* BatchNorm: identity rule, ``z = x · γ / sqrt(var + ε)``: relevance passes through and the bias absorbs none.

Weights are detached in every ``z``, so no parameter receives a gradient. ``stabilise(z) = z + ε·sign(z)`` with
``sign(0) = 1`` and an absolute ``ε = 1e-9``; where ``z`` is exactly 0 no input term contributed, so that output's
relevance is dropped instead of being divided by ``ε`` (which could only make huge gradients times zero inputs).

Gates carry no relevance (Arras et al.): the attention map of an Attention Branch Network is detached, so the
perception branch's ``g · (1 + M)`` hands ``g`` the relevance unchanged and none flows into the attention branch.

A layer's relevance is read at its output as the shared :class:`~abn.explain.layers.LayerRecorder` records it: a
copy *as it was produced*, even when the network later changes the output in place (``out += shortcut``,
``ReLU(inplace=True)``), through which only this layer's path flows; and as nothing before the first recorded layer
requires grad (the caller froze the parameters), the backward pass only runs from the logits down to the
shallowest requested layer. Rule hooks skip modules whose input does not require grad for the same reason.
"""

from __future__ import annotations

import difflib
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .layers import LayerRecorder, TargetHead, logits_of, resolve_targets

RULES = ("z+", "z")
STARTS = ("contrastive", "target", "unit")
EPSILON = 1e-9

ZFunction = Callable[[nn.Module, Tensor], Tensor]


def stabilise(z: Tensor) -> Tensor:
    """``z + ε·sign(z)`` with ``sign(0) = 1``: never zero, and small values keep their sign."""
    return z + torch.where(z >= 0, EPSILON, -EPSILON).to(z.dtype)


def _positive_part(x: Tensor) -> Tensor:
    # relu rather than clamp: its backward keeps its own output, not x, so a later in-place change of x is harmless
    return F.relu(x)


def _negative_part(x: Tensor) -> Tensor:
    return -F.relu(-x)


def _z_plus_conv(module: nn.Module, x: Tensor) -> Tensor:
    weight = module.weight.detach()
    positive = module._conv_forward(_positive_part(x), weight.clamp(min=0), None)
    negative = module._conv_forward(_negative_part(x), weight.clamp(max=0), None)
    return positive + negative


def _z_plus_linear(module: nn.Module, x: Tensor) -> Tensor:
    weight = module.weight.detach()
    return F.linear(_positive_part(x), weight.clamp(min=0)) + F.linear(_negative_part(x), weight.clamp(max=0))


def _z_plus_target_head(module: TargetHead, x: Tensor) -> Tensor:
    weight = module.weight.detach()
    positive = (_positive_part(x) * weight.clamp(min=0)).sum(dim=1)
    negative = (_negative_part(x) * weight.clamp(max=0)).sum(dim=1)
    return (positive + negative)[:, None]


def _z_plus_average_pool(module: nn.Module, x: Tensor) -> Tensor:
    # .forward, not __call__: calling the module would run this very hook again
    return module.forward(_positive_part(x))


def _identity_batch_norm(module: nn.Module, x: Tensor) -> Tensor:
    if module.training or module.running_var is None:
        reduced = [d for d in range(x.dim()) if d != 1]
        variance = x.detach().var(dim=reduced, unbiased=False)
    else:
        variance = module.running_var
    scale = torch.rsqrt(variance.detach() + module.eps)
    if module.weight is not None:
        scale = scale * module.weight.detach()
    return x * scale.reshape([1, -1] + [1] * (x.dim() - 2)).to(x.dtype)


Z_PLUS_RULES: tuple[tuple[tuple[type, ...], ZFunction], ...] = (
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), _z_plus_conv),
    ((nn.Linear,), _z_plus_linear),
    ((TargetHead,), _z_plus_target_head),
    (
        (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
        _z_plus_average_pool,
    ),
    ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), _identity_batch_norm),
)


def _z_function(module: nn.Module) -> Optional[ZFunction]:
    for types, z_function in Z_PLUS_RULES:
        if isinstance(module, types):
            return z_function
    return None


def with_rule_gradient(y: Tensor, z: Tensor) -> Tensor:
    """A tensor equal to ``y`` whose gradient is ``∂z/∂x · y / z`` (zero where ``z`` is exactly zero)."""
    y_value, z_value = y.detach(), z.detach()
    ratio = torch.where(z_value != 0, y_value / stabilise(z_value), torch.zeros_like(z_value))
    return y_value + (z - z_value) * ratio


def _rule_hook(z_function: ZFunction):
    def hook(module: nn.Module, inputs: tuple, output: object) -> Optional[Tensor]:
        if not inputs or not isinstance(inputs[0], Tensor) or not isinstance(output, Tensor):
            return None
        x = inputs[0]
        if not x.requires_grad:  # upstream of every requested layer: no relevance can reach it
            return None
        return with_rule_gradient(output, z_function(module, x))

    return hook


def _detach_attention(module: nn.Module, inputs: tuple, output: object) -> object:
    """Attention branch hook: the map M gates the features and so carries no relevance (the outputs after it, the
    class maps of the single-map branch, do not reach the logits)."""
    if isinstance(output, tuple) and len(output) in (2, 3) and isinstance(output[1], Tensor):
        return output[0], output[1].detach(), *output[2:]
    return None


def _check_choice(value: str, valid: tuple[str, ...], what: str) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _check_layer_names(model: nn.Module, layers: list[str]) -> list[str]:
    """The names once each; an unknown name is refused with the closest names of ``model.named_modules()``."""
    if isinstance(layers, str):
        layers = [layers]
    if not layers:
        raise ValueError("layers is empty; name at least one module of model.named_modules(), e.g. a stage")
    named = dict(model.named_modules())
    for name in layers:
        if name not in named:
            close = difflib.get_close_matches(name, [n for n in named if n], n=5, cutoff=0.5)
            examples = close or [n for n in named if n][:8]
            raise ValueError(
                f"unknown layer {name!r}; it must be a name of model.named_modules(), e.g. {', '.join(examples)}"
            )
    return list(dict.fromkeys(layers))


def _check_images(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor B×C×H×W, got {shape}; add a batch dimension or convert")
    return images.detach()


def start_gradient(logits: Tensor, targets: Tensor, start: str) -> Tensor:
    """The gradient that seeds the backward pass, so that ``logits ⊙ gradient`` is the start relevance.

    ``"target"``: the target's score (relevance = its logit, 0 elsewhere; the gradient is one-hot).
    ``"contrastive"``: relevance +1 at the target and −1/(N−1) at each of the N−1 other classes.
    ``"unit"``: relevance +1 at the target, 0 elsewhere: for multi-label attributes, which do not compete (an
    attribute's logit already weighs present against absent), whatever the logit's sign.
    """
    one_hot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    if start == "target":
        return one_hot
    if start == "unit":
        return one_hot / stabilise(logits.detach())
    num_classes = logits.shape[1]
    others = (1.0 - one_hot) / max(num_classes - 1, 1)
    return (one_hot - others) / stabilise(logits.detach())


def layer_relevance(
    model: nn.Module,
    images: Tensor,
    targets: Optional[Tensor],
    layers: list[str],
    rule: str = "z+",
    start: str = "contrastive",
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """LRP relevance at the outputs of ``layers`` (names of ``model.named_modules()``), for the ``targets`` classes
    (None: the predicted ones).

    Returns ``(relevance, activations)``, both keyed by layer name: the relevance B×C×h×w at the layer's output and
    that output itself (detached; its value before any later in-place change). ``rule``: ``"z+"`` (α1β0 for
    convolutions, linear layers and average pooling, identity for BatchNorm) or ``"z"`` (plain gradient × input).
    ``start``: ``"contrastive"`` (+1 at the target, −1/(N−1) elsewhere), ``"target"`` (the target's logit) or
    ``"unit"`` (+1 at the target alone: multi-label attributes).

    Put the model in eval mode first. A layer called several times in one forward pass reports its last call; a
    layer from which no relevance reaches the logits (inside the attention branch) gets zeros.
    """
    _check_choice(rule, RULES, "rule")
    _check_choice(start, STARTS, "start")
    names = _check_layer_names(model, layers)
    images = _check_images(images)
    handles: list[RemovableHandle] = []
    try:
        attention_branch = getattr(model, "attention_branch", None)
        if not isinstance(attention_branch, nn.Module):
            attention_branch = None
        if rule == "z+":
            # the attention branch's output is detached below, so rules inside it would be wasted work
            gated = set(map(id, attention_branch.modules())) if attention_branch is not None else set()
            for module in model.modules():
                z_function = _z_function(module)
                if z_function is not None and id(module) not in gated:
                    handles.append(module.register_forward_hook(_rule_hook(z_function)))
        if attention_branch is not None:
            handles.append(attention_branch.register_forward_hook(_detach_attention))
        with torch.enable_grad():
            # entered last, so the recorder sees each layer's output after that module's own rule hook
            with LayerRecorder(model, names) as recorder:
                logits = logits_of(model(images))
            outputs = recorder.recorded()
            targets = resolve_targets(targets, logits)
            if logits.requires_grad:
                gradients = torch.autograd.grad(logits, outputs, grad_outputs=start_gradient(logits, targets, start),
                                                allow_unused=True)
            else:  # every layer inside the attention branch, whose map is detached
                gradients = (None,) * len(outputs)
    finally:
        for handle in handles:
            handle.remove()

    relevance: dict[str, Tensor] = {}
    activations: dict[str, Tensor] = {}
    for name, output, gradient in zip(names, outputs, gradients):
        activations[name] = output.detach()
        relevance[name] = activations[name] * gradient if gradient is not None else torch.zeros_like(activations[name])
    return relevance, activations


def relevance_cam(model: nn.Module, images: Tensor, targets: Optional[Tensor], layers: list[str],
                  start: str = "contrastive") -> dict[str, Tensor]:
    """Raw Relevance-CAM maps, B×h×w per layer: ``ReLU(Σ_k w_k A^k)`` with ``w_k`` the spatial mean of channel k's
    relevance (z⁺ rule; contrastive start as Lee et al., CVPR 2021, or ``"unit"`` for multi-label attributes)."""
    relevance, activations = layer_relevance(model, images, targets, layers, rule="z+", start=start)
    maps: dict[str, Tensor] = {}
    for name, layer_relevance_map in relevance.items():
        channel_weights = layer_relevance_map.mean(dim=(2, 3))
        maps[name] = F.relu(torch.einsum("bc,bchw->bhw", channel_weights, activations[name]))
    return maps
