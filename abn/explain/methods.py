"""The explanation methods behind :func:`abn.explain.explain`: one function per method, and :data:`METHOD_SPECS`,
the table of what each supports, which :func:`~abn.explain.explain`, :func:`~abn.explain.applicable_methods`,
``abn-explain`` and the training callback read. A new method is its function and one entry in the table.

Every method takes a :class:`MapRequest` and returns raw maps by name (B×h×w at its layer's resolution, keyed by
layer; B×C×H×W input gradients for the guided methods); :func:`abn.explain.explain` resizes and normalises them.
On a multi-label model the target is an attribute and the score explained is that attribute's logit; a multi-task
ABN reaches the methods as an :class:`~abn.explain.layers.AttributeView` (one output: the target attribute's logit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.network import MultiTaskNetwork
from .layers import LayerRecorder, cam_layer, classifier_weights, logits_of, resolve_targets, unwrap
from .relevance import relevance_cam

Maps = dict[str, Tensor]


@dataclass(frozen=True)
class MapRequest:
    """What a method is asked: explain ``net``'s decision on ``images`` for ``targets`` (None: the prediction) at
    ``layers`` (checked names; empty for the methods that take no layer). ``multilabel``: the outputs are independent
    attributes, not competing classes (Relevance-CAM then starts from the target alone)."""

    net: nn.Module
    images: Tensor
    targets: Optional[object]
    layers: list[str]
    differentiable: bool = False
    interpolation: str = "bilinear"
    seed: int = 0
    multilabel: bool = False


def to_input_size(maps: Tensor, size: tuple[int, int], interpolation: str) -> Tensor:
    if maps.shape[-2:] == size:
        return maps
    extra = {"align_corners": False} if interpolation in ("bilinear", "bicubic") else {}
    return F.interpolate(maps[:, None], size=size, mode=interpolation, **extra)[:, 0]


def target_scores(logits: Tensor, targets: Tensor) -> Tensor:
    return logits.gather(1, targets[:, None]).sum()


def layer_gradients(request: MapRequest) -> tuple[list[Tensor], list[Tensor]]:
    """Activations of the request's layers and the gradients of the target scores w.r.t. them, in one forward and
    one backward that stops at the shallowest layer (no parameter gradients unless ``differentiable``)."""
    with LayerRecorder(request.net, request.layers) as recorder:
        logits = logits_of(request.net(request.images))
    activations = recorder.recorded()
    chosen = resolve_targets(request.targets, logits)
    grads = torch.autograd.grad(target_scores(logits, chosen), activations, create_graph=request.differentiable,
                                allow_unused=True)
    unused = [name for name, grad in zip(recorder.names, grads) if grad is None]
    if unused:
        raise ValueError(f"the class scores do not depend on layer(s) {', '.join(unused)}; choose a layer on the path to the classifier")
    return activations, list(grads)


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """ReLU(Σ_k w_k A^k): B×K weights and B×K×h×w activations → B×h×w."""
    return F.relu(torch.einsum("bk,bkhw->bhw", weights, activations))


def gradcam_weights(grads: Tensor, activations: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al.): the spatial mean of the gradients."""
    return grads.mean(dim=(2, 3))


def counterfactual_weights(grads: Tensor, activations: Tensor) -> Tensor:
    """Selvaraju et al.: negated gradients show what argues against the class (for an attribute's logit: against
    the attribute's presence)."""
    return -grads.mean(dim=(2, 3))


def gradcam_plus_plus_weights(grads: Tensor, activations: Tensor) -> Tensor:
    """Grad-CAM++ (Chattopadhyay et al.), with the exponential of the score: α = g² / (2g² + Σ_ab A·g³).

    ``grads`` are those of the score S itself: the paper's Y = exp(S) only scales every weight by exp(S) > 0, which
    the min-max scaling removes. For an attribute's logit z, exp(z) is the attribute's odds p / (1 − p)."""
    grads2, grads3 = grads.pow(2), grads.pow(3)
    denominator = 2 * grads2 + activations.sum(dim=(2, 3), keepdim=True) * grads3
    alpha = grads2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    return (alpha * F.relu(grads)).sum(dim=(2, 3))


ChannelWeights = Callable[[Tensor, Tensor], Tensor]


def gradient_cam(request: MapRequest, weights: ChannelWeights) -> Maps:
    """A Grad-CAM-style map at each layer: ReLU of the activations weighted by ``weights(gradients, activations)``."""
    activations, grads = layer_gradients(request)
    return {name: weighted_sum(weights(grad, act), act) for name, act, grad in zip(request.layers, activations, grads)}


def gradcam(request: MapRequest) -> Maps:
    return gradient_cam(request, gradcam_weights)


def gradcam_plus_plus(request: MapRequest) -> Maps:
    return gradient_cam(request, gradcam_plus_plus_weights)


def counterfactual(request: MapRequest) -> Maps:
    return gradient_cam(request, counterfactual_weights)


def class_activation_map(request: MapRequest) -> Maps:
    """CAM (Zhou et al.): Σ_k w_k^c A^k + b_c of the GAP + linear head, so the map's mean is the class score. On a
    multi-task ABN, A is the last stage's output on g·M^t and w attribute t's head (w₁ − w₀ for the 2-way head)."""
    name, classifier = cam_layer(request.net)
    wrong = [layer for layer in request.layers if layer != name]
    if wrong:
        raise ValueError(f"CAM is defined only at the feature map that feeds the GAP + linear head ({name!r}), "
                         f"not at {', '.join(map(repr, wrong))}; use gradcam for other layers")
    with LayerRecorder(request.net, [name]) as recorder, torch.set_grad_enabled(request.differentiable):
        logits = logits_of(request.net(request.images))
    (feature_map,) = recorder.recorded()
    chosen = resolve_targets(request.targets, logits)
    weight, bias = classifier_weights(classifier, chosen)
    return {name: torch.einsum("bk,bkhw->bhw", weight, feature_map) + bias[:, None, None]}


def attention(request: MapRequest) -> Maps:
    """The attention branch's map M, B×h×w, from one forward pass (class-agnostic; ``targets`` only checked). A
    multi-task ABN (seen through an :class:`~abn.explain.layers.AttributeView`) gives the target attribute's map."""
    output = request.net(request.images)
    resolve_targets(request.targets, logits_of(output))
    return {"attention": output.attention[:, 0]}


def attention_class_map(request: MapRequest) -> Maps:
    """The attention branch's map of the target class, B×h×w, from one forward pass: the K×K convolution's output
    whose spatial mean is the class's attention logit (a CAM of the attention branch, DESIGN §8)."""
    output = request.net(request.images)
    chosen = resolve_targets(request.targets, logits_of(output))
    rows = torch.arange(len(chosen), device=chosen.device)
    return {"class_map": output.class_maps[rows, chosen]}


def random_maps(request: MapRequest) -> Maps:
    """Uniform noise drawn from ``seed``: the sanity baseline."""
    images = request.images
    generator = torch.Generator().manual_seed(request.seed)
    return {"random": torch.rand(images.shape[0], *images.shape[-2:], generator=generator).to(images.device)}


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


def guided_input_gradient(model: nn.Module, images: Tensor, targets: Optional[object]) -> Tensor:
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


def guided_backprop(request: MapRequest) -> Maps:
    return {"input": guided_input_gradient(request.net, request.images, request.targets)}


def guided_gradcam(request: MapRequest) -> Maps:
    """Guided backprop × Grad-CAM up-sampled to the input (Selvaraju et al.)."""
    cams = gradient_cam(request, gradcam_weights)
    guided = guided_input_gradient(request.net, request.images, request.targets)
    size = tuple(request.images.shape[-2:])
    return {name: guided * to_input_size(cam, size, request.interpolation)[:, None] for name, cam in cams.items()}


def relevance_cams(request: MapRequest) -> Maps:
    start = "unit" if request.multilabel else "contrastive"
    return relevance_cam(request.net, request.images, request.targets, request.layers, start=start)


def has_attention_branch(model: nn.Module) -> bool:
    return getattr(unwrap(model), "attention_branch", None) is not None


def has_gap_linear_head(model: nn.Module) -> bool:
    return cam_layer(unwrap(model)) is not None


def has_class_maps(model: nn.Module) -> bool:
    """The single-map attention branch (``abn`` head), whose K×K convolution gives one map per class."""
    return has_attention_branch(model) and one_map(model)


def any_model(model: nn.Module) -> bool:
    return True


def one_map(model: nn.Module) -> bool:
    """The attention branch gives one map for every class (the ``abn`` head), not one per attribute (``multitask``)."""
    return not isinstance(unwrap(model), MultiTaskNetwork)


@dataclass(frozen=True)
class MethodSpec:
    """An explanation method: the function that computes its raw maps and what it supports.

    ``layer``: ``"none"`` (it explains the whole image or the input), ``"any"`` (any layer with a spatial output)
    or ``"head"`` (only the feature map that feeds the GAP + linear head). ``differentiable``: its maps can stay in
    the autograd graph. ``class_agnostic``: the same map whatever the target class (True, or a test of the network:
    see :meth:`is_class_agnostic`). ``input_attribution``: its raw
    result is a B×C×H×W attribution of the input. ``applies_to`` says which models it applies to, ``requirement``
    what the others lack.
    """

    compute: Callable[[MapRequest], Maps]
    layer: Literal["none", "any", "head"] = "any"
    differentiable: bool = False
    class_agnostic: Union[bool, Callable[[nn.Module], bool]] = False
    input_attribution: bool = False
    applies_to: Callable[[nn.Module], bool] = any_model
    requirement: str = ""

    @property
    def takes_layer(self) -> bool:
        return self.layer != "none"

    def is_class_agnostic(self, model: nn.Module) -> bool:
        """Whether the method gives ``model`` the same map whatever the target (``abn``: on the single-map head only)."""
        return self.class_agnostic(model) if callable(self.class_agnostic) else self.class_agnostic


METHOD_SPECS: dict[str, MethodSpec] = {
    "abn": MethodSpec(attention, layer="none", differentiable=True, class_agnostic=one_map,
                      applies_to=has_attention_branch, requirement="an attention branch (head=abn or multitask)"),
    "abn_class": MethodSpec(attention_class_map, layer="none", differentiable=True, applies_to=has_class_maps,
                            requirement="the attention branch of head=abn (its class maps)"),
    "cam": MethodSpec(class_activation_map, layer="head", differentiable=True, applies_to=has_gap_linear_head,
                      requirement="a GAP + linear head (or the multi-task head)"),
    "gradcam": MethodSpec(gradcam, differentiable=True),
    "gradcam++": MethodSpec(gradcam_plus_plus, differentiable=True),
    "guided_backprop": MethodSpec(guided_backprop, layer="none", input_attribution=True),
    "guided_gradcam": MethodSpec(guided_gradcam, input_attribution=True),
    "counterfactual": MethodSpec(counterfactual, differentiable=True),
    "relevance_cam": MethodSpec(relevance_cams),
    "random": MethodSpec(random_maps, layer="none", class_agnostic=True),
}
