"""The explanation methods behind :func:`abn.explain.explain`.

Every method returns raw maps (B×h×w at its layer's resolution; B×C×H×W input gradients for the guided methods);
:func:`abn.explain.explain` resizes and normalises them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import LayerRecorder, cam_layer, logits_of


def resolve_targets(targets: Optional[object], logits: Tensor) -> Tensor:
    """One class index per image: ``targets`` checked against the class count, or the prediction."""
    batch, num_classes = logits.shape
    if targets is None:
        return logits.argmax(dim=1)
    chosen = torch.as_tensor(targets, device=logits.device)
    if chosen.is_floating_point() or chosen.is_complex():
        raise ValueError(f"targets must be integer class indices, got dtype {chosen.dtype}")
    chosen = chosen.long()
    if chosen.dim() == 0:
        chosen = chosen.expand(batch)
    if chosen.shape != (batch,):
        raise ValueError(f"targets must be one class index per image ({batch}) or a single index, got shape {tuple(chosen.shape)}")
    wrong = chosen[(chosen < 0) | (chosen >= num_classes)]
    if len(wrong):
        raise ValueError(f"target class {int(wrong[0])} is out of range: the model has {num_classes} classes "
                         f"(valid targets 0..{num_classes - 1})")
    return chosen


def target_scores(logits: Tensor, targets: Tensor) -> Tensor:
    return logits.gather(1, targets[:, None]).sum()


def layer_gradients(
    model: nn.Module, images: Tensor, layers: Sequence[str], targets: Optional[object], differentiable: bool
) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Activations of ``layers`` and the gradients of the target scores w.r.t. them, in one forward and one
    backward that stops at the shallowest layer (no parameter gradients unless ``differentiable``)."""
    with LayerRecorder(model, layers) as recorder:
        logits = logits_of(model(images))
    chosen = resolve_targets(targets, logits)
    activations = [recorder.outputs[name] for name in layers]
    grads = torch.autograd.grad(target_scores(logits, chosen), activations, create_graph=differentiable, allow_unused=True)
    unused = [name for name, grad in zip(layers, grads) if grad is None]
    if unused:
        raise ValueError(f"the class scores do not depend on layer(s) {', '.join(unused)}; choose a layer on the path to the classifier")
    return activations, list(grads), chosen


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """ReLU(Σ_k w_k A^k): B×K weights and B×K×h×w activations → B×h×w."""
    return F.relu(torch.einsum("bk,bkhw->bhw", weights, activations))


def gradcam_weights(grads: Tensor, activations: Tensor, method: str) -> Tensor:
    if method == "gradcam":
        return grads.mean(dim=(2, 3))
    if method == "counterfactual":  # Selvaraju et al.: negated gradients show what argues against the class
        return -grads.mean(dim=(2, 3))
    # Grad-CAM++ (Chattopadhyay et al.), with the exponential of the score: α = g² / (2g² + Σ_ab A·g³)
    grads2, grads3 = grads.pow(2), grads.pow(3)
    denominator = 2 * grads2 + activations.sum(dim=(2, 3), keepdim=True) * grads3
    alpha = grads2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    return (alpha * F.relu(grads)).sum(dim=(2, 3))


def gradient_cams(model: nn.Module, images: Tensor, method: str, layers: Sequence[str], targets: Optional[object],
                  differentiable: bool) -> dict[str, Tensor]:
    """Grad-CAM, Grad-CAM++ or counterfactual Grad-CAM at each layer."""
    activations, grads, _ = layer_gradients(model, images, layers, targets, differentiable)
    return {name: weighted_sum(gradcam_weights(grad, act, method), act)
            for name, act, grad in zip(layers, activations, grads)}


def class_activation_map(model: nn.Module, images: Tensor, layers: Sequence[str], targets: Optional[object],
                         differentiable: bool) -> dict[str, Tensor]:
    """CAM (Zhou et al.): Σ_k w_k^c A^k + b_c of the GAP + linear head, so the map's mean is the class score."""
    name, linear = cam_layer(model)
    wrong = [layer for layer in layers if layer != name]
    if wrong:
        raise ValueError(f"CAM is defined only at the feature map that feeds the GAP + linear head ({name!r}), "
                         f"not at {', '.join(map(repr, wrong))}; use gradcam for other layers")
    with LayerRecorder(model, [name]) as recorder, torch.set_grad_enabled(differentiable):
        logits = logits_of(model(images))
    chosen = resolve_targets(targets, logits)
    feature_map = recorder.outputs[name]
    bias = linear.bias[chosen][:, None, None] if linear.bias is not None else 0.0
    return {name: torch.einsum("bk,bkhw->bhw", linear.weight[chosen], feature_map) + bias}


def attention_map(model: nn.Module, images: Tensor, targets: Optional[object]) -> Tensor:
    """The attention branch's map M, B×h×w, from one forward pass (class-agnostic; ``targets`` only checked)."""
    output = model(images)
    resolve_targets(targets, logits_of(output))
    return output.attention[:, 0]


class GuidedReLU(torch.autograd.Function):
    """Identity forward on a ReLU's output; backward lets through only positive gradients where the ReLU was open."""

    @staticmethod
    def forward(ctx, relu_output: Tensor) -> Tensor:
        ctx.save_for_backward(relu_output > 0)
        return relu_output.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (open_,) = ctx.saved_tensors
        return grad.clamp(min=0) * open_


def guided_backprop(model: nn.Module, images: Tensor, targets: Optional[object]) -> Tensor:
    """Springenberg et al.: the input gradient with every ``nn.ReLU`` module's backward guided (B×C×H×W)."""
    handles = [module.register_forward_hook(lambda module, inputs, output: GuidedReLU.apply(output))
               for module in model.modules() if isinstance(module, nn.ReLU)]
    try:
        inputs = images.detach().requires_grad_()
        logits = logits_of(model(inputs))
        chosen = resolve_targets(targets, logits)
        (grad,) = torch.autograd.grad(target_scores(logits, chosen), inputs)
    finally:
        for handle in handles:
            handle.remove()
    return grad


def relevance_cams(model: nn.Module, images: Tensor, layers: Sequence[str], targets: Optional[object]) -> dict[str, Tensor]:
    from .relevance import relevance_cam

    chosen = None  # None: relevance_cam explains the prediction of its own forward pass
    if targets is not None:  # checked here for the same message as every other method
        with torch.no_grad():
            chosen = resolve_targets(targets, logits_of(model(images[:1])).expand(len(images), -1))
    return relevance_cam(model, images, chosen, list(layers))
