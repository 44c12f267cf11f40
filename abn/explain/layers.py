"""Finding and recording layers of any CNN (the models of :mod:`abn.models` and plain torchvision networks), and
reading its class scores and the classes to explain: what every explanation method shares. A multi-task ABN is
explained through :class:`AttributeView`, which runs for each image only the perception path of its target attribute."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import ABNOutput, AttentionBranchNetwork, GapLinearHead
from ..models.network import MultiTaskNetwork, TaskHeads

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside an :class:`abn.module.ABNModule` (its ``net``), or the model itself."""
    inner = getattr(model, "net", None)
    return inner if isinstance(inner, nn.Module) else model


def logits_of(output: Any) -> Tensor:
    """Class scores from a model's output: ``ABNOutput.logits`` or the tensor itself."""
    logits = output.logits if hasattr(output, "logits") else output
    if not torch.is_tensor(logits) or logits.dim() != 2:
        raise ValueError(f"expected the model to return B×K class scores (or an object with .logits), got {type(output).__name__}")
    return logits


def resolve_targets(targets: Optional[object], logits: Tensor, noun: str = "class") -> Tensor:
    """One class index per image: ``targets`` (one per image, or one for all) checked against the class count, or
    the prediction when None. ``noun`` names the outputs in messages ("attribute" for multi-label models)."""
    batch, num_classes = logits.shape
    if targets is None:
        return logits.argmax(dim=1)
    return check_targets(targets, batch, num_classes, logits.device, noun)


def check_targets(targets: object, batch: int, num_outputs: int, device: torch.device, noun: str = "class") -> Tensor:
    """``targets`` as ``batch`` indices in [0, ``num_outputs``) on ``device``; a clear error otherwise."""
    chosen = torch.as_tensor(targets, device=device)
    if chosen.dim() == 0:
        chosen = chosen.expand(batch)
    if chosen.is_floating_point() or chosen.is_complex() or chosen.dtype == torch.bool or chosen.shape != (batch,):
        raise ValueError(f"targets must be {batch} integer {noun} indices (one {noun} index per image) or a single "
                         f"index, got {chosen.dtype} of shape {tuple(torch.as_tensor(targets).shape)}")
    wrong = chosen[(chosen < 0) | (chosen >= num_outputs)]
    if len(wrong):
        plural = "classes" if noun == "class" else f"{noun}s"
        raise ValueError(f"target {noun} {int(wrong[0])} is out of range: the model has {num_outputs} {plural} "
                         f"(targets must lie in [0, {num_outputs}))")
    return chosen.long()


def spatial_layers(model: nn.Module, images: Tensor) -> list[str]:
    """Names of the modules whose output is a B×C×h×w map, in the order the forward pass runs them."""
    found: list[str] = []

    def record(name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if torch.is_tensor(output) and output.dim() == 4 and name not in found:
                found.append(name)
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    return found


def default_layer(model: nn.Module, images: Tensor) -> str:
    """Where the CAM-style methods look by default: the feature map that feeds the classifier.

    ``last_stage`` for the networks of :mod:`abn.models` (for a multi-task ABN: the last stage's output on g·M^t, the
    features of attribute t alone); for other CNNs the last top-level module, pools excepted,
    whose output is still spatial (``layer4`` of a torchvision ResNet, ``features`` of VGG, DenseNet, MobileNet).
    """
    if isinstance(model, (AttentionBranchNetwork, MultiTaskNetwork, AttributeView)):
        return "last_stage"
    head = cam_layer(model)
    if head is not None:  # <feature map> → GAP → linear: no probe forward needed
        return head[0]
    modules = dict(model.named_modules())
    candidates = [name for name in spatial_layers(model, images) if "." not in name and not isinstance(modules[name], POOLS)]
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no top-level module with a spatial output; name a layer with layer=...")
    return candidates[-1]


def check_layers(model: nn.Module, names: Sequence[str], images: Tensor) -> None:
    """Refuse a name that is no module of ``model``, listing the names that are (modules with a spatial output)."""
    modules = dict(model.named_modules())
    unknown = [name for name in names if not name or name not in modules]
    if not unknown:
        return
    valid = spatial_layers(model, images)
    # stages and blocks, plus top-level layers; every other module with a spatial output works too
    listed = [name for name in valid if "." not in name or len(list(modules[name].children())) > 0]
    others = len(valid) - len(listed)
    listing = ", ".join(listed) + (f" (and {others} single layers inside them, e.g. {valid[0]!r}: see "
                                   "model.named_modules())" if others else "")
    raise ValueError(f"no layer named {', '.join(map(repr, unknown))} in {type(model).__name__}; "
                     f"layers with a spatial output: {listing}")


class LayerRecorder:
    """Forward hooks that keep the outputs of the named layers during one forward pass.

    Each output is recorded as a copy, and the network continues on another copy: an in-place operation after the
    layer (``out += shortcut``, ``ReLU(inplace=True)``) neither changes the recorded values nor breaks
    differentiation, and the gradient with respect to a recorded output is the one that flowed through this layer
    only (an ``Identity`` hands on its input, which other paths may use too). An output that does not require grad
    (frozen parameters, plain input) is recorded as a fresh leaf of the autograd graph: a backward pass from the
    scores then stops at the shallowest recorded layer. A layer that runs several times keeps its last output.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]):
        self.model, self.names = model, list(dict.fromkeys(names))
        self.outputs: dict[str, Tensor] = {}
        self._handles: list[Any] = []

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> Tensor:
            if not torch.is_tensor(output) or output.dim() != 4:
                shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
                raise ValueError(f"layer {name!r} outputs {shape}, not a B×C×h×w feature map; choose a convolutional layer")
            recorded = output.clone() if output.requires_grad else output.detach().clone().requires_grad_()
            self.outputs[name] = recorded
            return recorded.clone()
        return hook

    def recorded(self) -> list[Tensor]:
        """The recorded outputs in the order of ``names``; an error names any layer that did not run."""
        missing = [name for name in self.names if name not in self.outputs]
        if missing:
            raise ValueError(f"layer(s) {', '.join(missing)} did not run in the model's forward pass")
        return [self.outputs[name] for name in self.names]

    def __enter__(self) -> "LayerRecorder":
        modules = dict(self.model.named_modules())
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.names]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def cam_layer(model: nn.Module) -> Optional[tuple[str, nn.Module]]:
    """The layer and linear classifier of a GAP + linear head (where CAM applies), or None.

    Networks of :mod:`abn.models` with a :class:`GapLinearHead`; the multi-task ABN, whose attribute heads are linear
    on the pooled ``last_stage`` output of each attribute (:class:`TaskHeads`; :class:`TargetHead` in an
    :class:`AttributeView`); other CNNs whose last three top-level modules are <feature map>,
    ``AdaptiveAvgPool2d(1)``, ``Linear`` (torchvision's ResNets, ResNeXts, Wide ResNets, RegNets).
    """
    if isinstance(model, AttributeView):
        return "last_stage", model.target_head
    if isinstance(model, MultiTaskNetwork):
        return "last_stage", model.head
    if isinstance(model, AttentionBranchNetwork):
        return ("last_stage", model.head.fc) if isinstance(model.head, GapLinearHead) else None
    children = list(model.named_children())
    if len(children) < 3:
        return None
    (name, _), (_, pool), (_, linear) = children[-3:]
    if isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1)) and isinstance(linear, nn.Linear):
        return name, linear
    return None


def classifier_weights(classifier: nn.Module, chosen: Tensor) -> tuple[Tensor, Tensor]:
    """The B×C weights and B biases that turn pooled features into the score of each image's chosen output, for the
    classifiers :func:`cam_layer` returns."""
    if isinstance(classifier, TaskHeads):
        classifier = TargetHead(classifier, chosen)
    if isinstance(classifier, TargetHead):
        batch = len(chosen)
        return classifier.weight.expand(batch, -1), classifier.bias.expand(batch)
    bias = classifier.bias[chosen] if classifier.bias is not None else torch.zeros(len(chosen), device=chosen.device)
    return classifier.weight[chosen], bias


class TargetHead(nn.Module):
    """The linear head of one attribute per image, taken from a multi-task ABN's :class:`TaskHeads`: pooled B×C
    features → B×1 logits. The 2-way head's logit z₁ − z₀ is linear in the features, with weight w₁ − w₀ and bias
    b₁ − b₀, so it is one linear unit here (CAM weights, and the z⁺ rule of Relevance-CAM, apply to it as to any
    linear layer). ``weight`` (B×C or 1×C) and ``bias`` (B or 1) are computed from the heads' parameters, so a
    gradient reaches them where the parameters require one."""

    def __init__(self, heads: TaskHeads, targets: Tensor):
        super().__init__()
        weight, bias = heads.weight[targets.reshape(-1)], heads.bias[targets.reshape(-1)]  # n×O×C, n×O
        if weight.shape[1] == 2:
            self.weight, self.bias = weight[:, 1] - weight[:, 0], bias[:, 1] - bias[:, 0]
        else:
            self.weight, self.bias = weight[:, 0], bias[:, 0]

    def forward(self, pooled: Tensor) -> Tensor:
        return ((pooled * self.weight).sum(dim=1) + self.bias)[:, None]


class AttributeView(nn.Module):
    """A multi-task ABN seen through one attribute per image: a network with one output, the logit of attribute
    ``targets[b]`` for image b (one index for all images, or one per image).

    It runs the network's own parts, under their own names (``features``, ``attention_branch``, ``last_stage``, …,
    so layer names and hooks are those of the network): g = features(x), the T maps of the attention branch, then
    for image b the shared last stage on g·M^t (or g·(1 + M^t)), t = targets[b], average pooling and attribute t's
    head (:class:`TargetHead`). So every explanation method, written for a network with class scores, explains the
    attribute's logit, and the last stage runs on B images instead of B·T. Its output's ``attention`` is map t
    (B×1×h×w) and ``att_logits`` the attribute's attention logit. The logits equal the network's own in eval mode;
    in training mode the last stage's BatchNorm takes its statistics over the B images (mixed attributes), not per
    attribute as the network's forward does.
    """

    def __init__(self, net: MultiTaskNetwork, targets: Union[int, Tensor]):
        super().__init__()
        device = net.head.weight.device
        self.targets = torch.as_tensor(targets, device=device).long()
        if self.targets.dim() > 1:
            raise ValueError(f"targets must be one attribute index or one per image, got shape "
                             f"{tuple(self.targets.shape)}")
        for name, child in net.named_children():  # the same modules under the same names
            self.add_module(name, child)
        self.target_head = TargetHead(net.head, self.targets)
        self.attention_mode = net.attention_mode
        self.in_chans, self.num_classes = net.in_chans, 1
        self.training = net.training

    def forward(self, x: Tensor) -> ABNOutput:
        g = self.features(x)
        att_logits, maps = self.attention_branch(g)
        if maps.shape[-2:] != g.shape[-2:]:
            maps = F.interpolate(maps, size=g.shape[-2:], mode="bilinear", align_corners=False)
        targets = self.targets.expand(len(x)) if self.targets.dim() == 0 else self.targets
        if len(targets) != len(x):
            raise ValueError(f"this view explains {len(targets)} images (one attribute each), got {len(x)}")
        rows = torch.arange(len(x), device=x.device)
        chosen = maps[rows, targets][:, None]  # B×1×h×w
        weighted = g * (1.0 + chosen if self.attention_mode == "residual" else chosen)
        logits = self.target_head(self.last_stage(weighted).mean(dim=(2, 3)))
        return ABNOutput(logits, att_logits[rows, targets][:, None], chosen)
