"""Finding and recording layers of any CNN (the models of :mod:`abn.models` and plain torchvision networks), and
reading its class scores and the classes to explain: what every explanation method shares."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from ..models import AttentionBranchNetwork, GapLinearHead

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


def resolve_targets(targets: Optional[object], logits: Tensor) -> Tensor:
    """One class index per image: ``targets`` (one per image, or one for all) checked against the class count, or
    the prediction when None."""
    batch, num_classes = logits.shape
    if targets is None:
        return logits.argmax(dim=1)
    chosen = torch.as_tensor(targets, device=logits.device)
    if chosen.dim() == 0:
        chosen = chosen.expand(batch)
    if chosen.is_floating_point() or chosen.is_complex() or chosen.dtype == torch.bool or chosen.shape != (batch,):
        raise ValueError(f"targets must be {batch} integer class indices (one class index per image) or a single "
                         f"index, got {chosen.dtype} of shape {tuple(torch.as_tensor(targets).shape)}")
    wrong = chosen[(chosen < 0) | (chosen >= num_classes)]
    if len(wrong):
        raise ValueError(f"target class {int(wrong[0])} is out of range: the model has {num_classes} classes "
                         f"(targets must lie in [0, {num_classes}))")
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

    ``last_stage`` for the networks of :mod:`abn.models`; for other CNNs the last top-level module, pools excepted,
    whose output is still spatial (``layer4`` of a torchvision ResNet, ``features`` of VGG, DenseNet, MobileNet).
    """
    if isinstance(model, AttentionBranchNetwork):
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


def cam_layer(model: nn.Module) -> Optional[tuple[str, nn.Linear]]:
    """The layer and linear classifier of a GAP + linear head (where CAM applies), or None.

    Networks of :mod:`abn.models` with a :class:`GapLinearHead`; other CNNs whose last three top-level modules are
    <feature map>, ``AdaptiveAvgPool2d(1)``, ``Linear`` (torchvision's ResNets, ResNeXts, Wide ResNets, RegNets).
    """
    if isinstance(model, AttentionBranchNetwork):
        return ("last_stage", model.head.fc) if isinstance(model.head, GapLinearHead) else None
    children = list(model.named_children())
    if len(children) < 3:
        return None
    (name, _), (_, pool), (_, linear) = children[-3:]
    if isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1)) and isinstance(linear, nn.Linear):
        return name, linear
    return None
