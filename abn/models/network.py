"""The network shared by every backbone: feature extractor, optional attention branch, perception branch.

A backbone family only supplies the pieces (a :class:`Backbone`, see ``resnet_cifar.py``); :func:`build_network`
wires them for a head the way the official ABN code does (DESIGN §1):

    g  = features(x)                                  # every stage before the last one
    att_logits, M = attention_branch(g)               # stride-1 copy of the last stage + map head
    g' = g * (1 + M)        (or g * M)                # attention mechanism
    logits = head(last_stage(g'))                     # perception branch

Built without an attention branch, the same code gives the ``baseline`` and ``cam`` networks. The ``multitask``
head (the paper's CelebA model, DESIGN §7) learns one map per attribute and runs the shared last stage on g·M^t for
every attribute t, batched (:class:`MultiTaskNetwork`). A new head is a name in :data:`HEADS` and its case in
:func:`build_network`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTENTION_MODES = ("residual", "multiply")
HEADS = ("baseline", "cam", "abn", "multitask")
# attention_mode=None means the head's own: the paper's Eq. 2 for ABN, g·M^t as the authors' CelebA code
DEFAULT_ATTENTION_MODE = {"abn": "residual", "multitask": "multiply"}
MAP_POOLINGS = ("max", "avg")  # multitask: how a map becomes its attribute's attention logit
MAP_ACTIVATIONS = ("none", "sigmoid")  # multitask: the raw 1×1 conv output (the authors'), or its sigmoid
TASK_HEADS = ("two_way", "one_logit")  # multitask: Linear(C, 2) + softmax CE (the authors'), or Linear(C, 1) + BCE
BranchDepth = Union[str, int]


def resolve_branch_depth(branch_depth: BranchDepth, num_blocks: int) -> int:
    """How many blocks of the last stage the attention branch copies.

    ``"full"`` copies the whole stage (the official code), ``"light"`` one block, an integer that many blocks.
    """
    if branch_depth == "full":
        return num_blocks
    if branch_depth == "light":
        return 1
    if isinstance(branch_depth, int) and not isinstance(branch_depth, bool) and 1 <= branch_depth <= num_blocks:
        return branch_depth
    raise ValueError(
        f"branch_depth must be 'full', 'light' or a block count from 1 to {num_blocks} (the blocks in this "
        f"stage), got {branch_depth!r}"
    )


class ABNOutput(NamedTuple):
    """What every model of :mod:`abn.models` returns.

    ``logits``: perception-branch class scores, B×K. ``att_logits``: attention-branch class scores, B×K.
    ``attention``: the attention map M, B×1×h×w in [0, 1]. The last two are None for heads without a branch. The
    ``multitask`` head gives one logit per attribute (B×T) in both branches and one map per attribute, B×T×h×w.
    ``class_maps`` (``abn`` head only): the attention branch's map of every class, B×K×h×w, whose spatial mean is
    ``att_logits`` (a CAM of the attention branch, DESIGN §8).
    """

    logits: Tensor
    att_logits: Optional[Tensor] = None
    attention: Optional[Tensor] = None
    class_maps: Optional[Tensor] = None


def init_weights(model: nn.Module) -> None:
    """He-normal (fan-out) convolutions and unit BatchNorm, as the official code initialises."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def stride_one_copy(stage: nn.Module) -> nn.Module:
    """A copy of ``stage``, weights included, that keeps its input's resolution: every convolution's stride set to
    1 and every down-sampling pool removed (the attention branch's copy of the last stage)."""
    branch = copy.deepcopy(stage)
    for name, module in list(branch.named_modules()):
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)) and module.stride not in (1, (1, 1)):
            parent_name, _, child = name.rpartition(".")
            setattr(branch.get_submodule(parent_name) if parent_name else branch, child, nn.Identity())
    return branch


class AttentionBranch(nn.Module):
    """Stage copy → BN → 1×1 conv C→K → BN → ReLU, then {1×1 conv K→K → GAP} and {conv K→1 → BN → sigmoid}.

    Returns (attention logits B×K, map M B×1×h×w, class maps B×K×h×w: the K×K convolution's output before GAP)."""

    def __init__(self, stage: nn.Module, channels: int, num_classes: int, map_kernel_size: int = 3):
        super().__init__()
        self.stage = stage
        self.bn = nn.BatchNorm2d(channels)
        self.class_conv = nn.Conv2d(channels, num_classes, kernel_size=1, bias=False)
        self.class_bn = nn.BatchNorm2d(num_classes)
        self.relu = nn.ReLU(inplace=True)
        self.logit_conv = nn.Conv2d(num_classes, num_classes, kernel_size=1, bias=False)
        self.map_conv = nn.Conv2d(num_classes, 1, kernel_size=map_kernel_size, padding=map_kernel_size // 2, bias=False)
        self.map_bn = nn.BatchNorm2d(1)

    def init_new_layers(self) -> None:
        """Initialise the layers after the stage copy, leaving the copy (which may hold pretrained weights) as is."""
        for layer in (self.bn, self.class_conv, self.class_bn, self.logit_conv, self.map_conv, self.map_bn):
            init_weights(layer)

    def forward(self, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = self.bn(self.stage(g))
        a = self.relu(self.class_bn(self.class_conv(a)))
        attention = torch.sigmoid(self.map_bn(self.map_conv(a)))
        class_maps = self.logit_conv(a)
        return class_maps.mean(dim=(2, 3)), attention, class_maps


class GapLinearHead(nn.Module):
    """Global average pooling + linear layer; its weights give class activation maps (Zhou et al. 2016, the
    ``cam`` method of :func:`abn.explain.explain`)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, feature_map: Tensor) -> Tensor:
        return self.fc(feature_map.mean(dim=(2, 3)))


class AttentionBranchNetwork(nn.Module):
    """A CNN split before its last stage, with or without an attention branch.

    ``head`` names how it was built: ``baseline``, ``cam`` or ``abn``.
    """

    def __init__(
        self,
        features: nn.Module,
        last_stage: nn.Module,
        head: nn.Module,
        in_chans: int,
        num_classes: int,
        attention_branch: Optional[AttentionBranch] = None,
        attention_mode: str = "residual",
        head_name: str = "baseline",
    ):
        super().__init__()
        self.features = features
        self.attention_branch = attention_branch
        self.last_stage = last_stage
        self.head = head
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.attention_mode = attention_mode
        self.head_name = head_name

    def check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected an image batch of shape B×{self.in_chans}×H×W, got {tuple(x.shape)}; "
                f"build the model with in_chans={x.shape[1] if x.dim() == 4 else '?'} or convert the images"
            )

    def forward(self, x: Tensor) -> ABNOutput:
        self.check_input(x)
        g = self.features(x)
        att_logits = attention = class_maps = None
        if self.attention_branch is not None:
            att_logits, attention, class_maps = self.attention_branch(g)
            if attention.shape[-2:] != g.shape[-2:]:
                # a stage copy whose stride-1 form is not size-preserving (e.g. a 2×2 patch conv); rare
                attention = F.interpolate(attention, size=g.shape[-2:], mode="bilinear", align_corners=False)
            g = g * (1.0 + attention) if self.attention_mode == "residual" else g * attention
        return ABNOutput(self.head(self.last_stage(g)), att_logits, attention, class_maps)


class MultiTaskAttentionBranch(nn.Module):
    """Stage copy → 1×1 conv C→T without bias: channel t is attribute t's map M^t (no BatchNorm, as the authors'
    CelebA code). Attribute t's attention logit pools the raw map (global max, or average); ``map_activation``
    chooses whether the perception branch sees the raw map or its sigmoid."""

    def __init__(self, stage: nn.Module, channels: int, num_tasks: int, pooling: str = "max",
                 map_activation: str = "none"):
        super().__init__()
        self.stage = stage
        self.map_conv = nn.Conv2d(channels, num_tasks, kernel_size=1, bias=False)
        self.pooling, self.map_activation = pooling, map_activation

    def init_new_layers(self) -> None:
        """LeCun-normal (std 1/sqrt(C)), the scale of a linear classifier on the features (Chainer's default, which
        the authors' code used). He-normal fan-out would give std sqrt(2/T): raw maps in the hundreds after a few
        steps from scratch, which the perception branch multiplies into its features."""
        nn.init.normal_(self.map_conv.weight, std=self.map_conv.in_channels ** -0.5)

    def forward(self, g: Tensor) -> tuple[Tensor, Tensor]:
        maps = self.map_conv(self.stage(g))
        att_logits = maps.amax(dim=(2, 3)) if self.pooling == "max" else maps.mean(dim=(2, 3))
        return att_logits, torch.sigmoid(maps) if self.map_activation == "sigmoid" else maps


class TaskHeads(nn.Module):
    """T attribute-specific linear layers on the pooled features, held as one T×O×C weight (O = 2 or 1 outputs).

    A 2-way head (the authors') gives the logit z₁ − z₀: binary cross-entropy on it is exactly the 2-way softmax
    cross-entropy, so every head form returns one logit per attribute.
    """

    def __init__(self, channels: int, num_tasks: int, outputs: int = 2):
        super().__init__()
        bound = channels ** -0.5  # nn.Linear's default initialisation, per attribute
        self.weight = nn.Parameter(torch.empty(num_tasks, outputs, channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_tasks, outputs).uniform_(-bound, bound))

    def forward(self, pooled: Tensor, tasks: slice = slice(None)) -> Tensor:
        """``pooled``: B×t×C features of the attributes ``tasks`` → their B×t logits."""
        scores = torch.einsum("btc,toc->bto", pooled, self.weight[tasks]) + self.bias[tasks]
        return scores[..., 1] - scores[..., 0] if scores.shape[-1] == 2 else scores[..., 0]


class TaskBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that, in training with ``tasks`` = t > 1, treats a batch of B·t images (b-major: image b of
    attribute j at index b·t + j) as t batches of B: statistics per attribute, running statistics updated t times
    in attribute order. So one pass over B·t images gives what t passes over B images give (the authors' loop),
    outputs, gradients and running statistics alike. Same parameters and buffers as ``nn.BatchNorm2d``."""

    tasks: int = 1

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.tasks == 1:
            return super().forward(x)
        batch, channels, height, width = x.shape
        per_task = x.reshape(batch // self.tasks, self.tasks * channels, height, width)
        if self.track_running_stats and self.running_mean is not None:
            self._update_running_stats(per_task)
        weight = self.weight.repeat(self.tasks) if self.weight is not None else None
        bias = self.bias.repeat(self.tasks) if self.bias is not None else None
        out = F.batch_norm(per_task, None, None, weight, bias, training=True, momentum=0.0, eps=self.eps)
        return out.reshape(batch, channels, height, width)

    @torch.no_grad()
    def _update_running_stats(self, per_task: Tensor) -> None:
        means = per_task.mean(dim=(0, 2, 3)).view(self.tasks, -1)
        variances = per_task.var(dim=(0, 2, 3), unbiased=True).view(self.tasks, -1)
        for mean, variance in zip(means, variances):
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
            self.running_var.lerp_(variance.to(self.running_var.dtype), factor)


def with_task_batch_norm(stage: nn.Module) -> nn.Module:
    """``stage`` with every ``nn.BatchNorm2d`` replaced by a :class:`TaskBatchNorm2d` holding its weights and buffers."""
    for name, child in list(stage.named_children()):
        if type(child) is nn.BatchNorm2d:
            task_norm = TaskBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                        child.track_running_stats)
            task_norm.load_state_dict(child.state_dict())
            setattr(stage, name, task_norm)
        else:
            with_task_batch_norm(child)
    return stage


class MultiTaskNetwork(nn.Module):
    """The multi-task ABN (paper §3.4): one attention map per attribute, and for each attribute t the **shared** last
    stage on g·M^t (or g·(1+M^t)), average pooling and attribute t's own linear head.

    The authors run the last stage T times in a loop; here it runs on ``task_chunk`` attributes at once (a batch of
    B·task_chunk images), with per-attribute BatchNorm statistics (:class:`TaskBatchNorm2d`), so every chunk size
    gives the loop's outputs and gradients; ``task_chunk=1`` is the loop. Larger chunks are faster and take more
    memory; None runs all T at once.
    """

    head_name = "multitask"

    def __init__(self, features: nn.Module, attention_branch: MultiTaskAttentionBranch, last_stage: nn.Module,
                 head: TaskHeads, in_chans: int, num_classes: int, attention_mode: str = "multiply",
                 task_chunk: Optional[int] = None):
        super().__init__()
        self.features = features
        self.attention_branch = attention_branch
        self.last_stage = with_task_batch_norm(last_stage)
        # the layers whose ``tasks`` each chunk sets (a tuple, not registered twice as submodules)
        self.task_norms = tuple(module for module in self.last_stage.modules() if isinstance(module, TaskBatchNorm2d))
        self.head = head
        self.in_chans, self.num_classes = in_chans, num_classes
        self.attention_mode, self.task_chunk = attention_mode, task_chunk

    check_input = AttentionBranchNetwork.check_input

    def forward(self, x: Tensor) -> ABNOutput:
        self.check_input(x)
        g = self.features(x)
        att_logits, maps = self.attention_branch(g)
        if maps.shape[-2:] != g.shape[-2:]:
            maps = F.interpolate(maps, size=g.shape[-2:], mode="bilinear", align_corners=False)
        chunk = self.task_chunk or self.num_classes
        logits = [self.task_logits(g, maps, slice(start, min(start + chunk, self.num_classes)))
                  for start in range(0, self.num_classes, chunk)]
        return ABNOutput(torch.cat(logits, dim=1), att_logits, maps)

    def task_logits(self, g: Tensor, maps: Tensor, tasks: slice) -> Tensor:
        """The perception branch of the attributes ``tasks``, as one batch of B·t images."""
        weights = maps[:, tasks].unsqueeze(2)  # B×t×1×h×w
        weighted = g.unsqueeze(1) * (1.0 + weights if self.attention_mode == "residual" else weights)
        batch, count = weighted.shape[:2]
        for norm in self.task_norms:
            norm.tasks = count
        try:
            features = self.last_stage(weighted.flatten(0, 1))
        finally:
            for norm in self.task_norms:
                norm.tasks = 1
        return self.head(features.mean(dim=(2, 3)).view(batch, count, -1), tasks)


@dataclass
class Backbone:
    """A CNN cut before its last stage: what a family builder returns and :func:`build_network` turns into a
    ``baseline``, ``cam`` or ``abn`` network. A family knows nothing of heads; the optional fields describe where
    a backbone differs from the plain case (GAP + linear classifier, branch as wide as the last stage, weights
    initialised by the builder)."""

    features: nn.Module  # every stage before the last one
    last_stage: nn.Module
    channels: int  # channels of the last stage's output
    # the first n blocks of the last stage at stride 1, the attention branch's stage: a copy of the weights where
    # they may be pretrained, a new stage otherwise
    branch_stage: Callable[[int], nn.Module]
    num_blocks: Optional[int]  # blocks of the last stage ``branch_depth`` counts; None: the stage is one block
    branch_channels: Optional[Callable[[int], int]] = None  # channels out of branch_stage(n) when not ``channels``
    # the backbone's own classifier when it is not GAP + linear (built on demand: the cam head replaces it)
    classifier: Optional[Callable[[], nn.Module]] = None
    gap_linear: Optional[GapLinearHead] = None  # the backbone's own GAP + linear (e.g. pretrained); None: a new one
    # the cam head's last stage and its channels where it differs (VGG-GAP: pool5 and the FC layers replaced)
    cam_stage: Optional[Callable[[], tuple[nn.Module, int]]] = None
    # initialises the whole network once built (backbones trained from scratch); None: the parts keep their
    # weights (pretrained, or set by the family) and only the layers build_network adds are initialised
    initialise: Optional[Callable[[nn.Module], None]] = None


def resolve_attention_mode(head: str, attention_mode: Optional[str]) -> str:
    """The configured mode, or the head's own where none is set (residual for abn, multiply for multitask)."""
    return attention_mode or DEFAULT_ATTENTION_MODE.get(head, "residual")


def check_head_options(attention_mode: str, map_kernel_size: int, task_chunk: Optional[int] = None,
                       map_pooling: str = "max", map_activation: str = "none", task_head: str = "two_way") -> None:
    if attention_mode not in ATTENTION_MODES:
        raise ValueError(f"unknown attention_mode {attention_mode!r}; valid: {', '.join(ATTENTION_MODES)}")
    if map_kernel_size not in (1, 3):
        raise ValueError(f"map_kernel_size must be 1 or 3 (the paper draws 1, the official code uses 3), got {map_kernel_size}")
    if task_chunk is not None and (isinstance(task_chunk, bool) or not isinstance(task_chunk, int) or task_chunk < 1):
        raise ValueError(f"task_chunk must be a positive number of attributes (or null: all at once), got {task_chunk!r}")
    for name, value, valid in (("map_pooling", map_pooling, MAP_POOLINGS), ("map_activation", map_activation,
                               MAP_ACTIVATIONS), ("task_head", task_head, TASK_HEADS)):
        if value not in valid:
            raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def branch_block_count(backbone: Backbone, branch_depth: BranchDepth) -> int:
    if backbone.num_blocks is None:
        if branch_depth != "full":
            raise ValueError(
                "branch_depth other than 'full' needs a registered arch (see abn.models.list_models()); "
                "a torchvision:<name> backbone copies the whole last stage"
            )
        return 1
    return resolve_branch_depth(branch_depth, backbone.num_blocks)


def build_network(
    backbone: Backbone,
    head: str,
    num_classes: int,
    in_chans: int,
    attention_mode: Optional[str] = None,
    map_kernel_size: int = 3,
    branch_depth: BranchDepth = "full",
    task_chunk: Optional[int] = None,
    map_pooling: str = "max",
    map_activation: str = "none",
    task_head: str = "two_way",
) -> nn.Module:
    """The ``head`` network of ``backbone``'s parts, initialised. ``head`` is one of :data:`HEADS` (checked by
    :func:`abn.models.create_model`); the other options apply to the heads with a branch and are checked here.

    ``baseline``: last stage → the backbone's classifier. ``cam``: last stage (or ``cam_stage``) → GAP + linear.
    ``abn``: the baseline plus an attention branch on a stride-1 copy of the last stage's first blocks.
    ``multitask``: ``num_classes`` attributes, one map each (:class:`MultiTaskNetwork`; ``task_chunk``,
    ``map_pooling``, ``map_activation`` and ``task_head`` are its options, ``map_kernel_size`` does not apply).
    """
    attention_mode = resolve_attention_mode(head, attention_mode)
    check_head_options(attention_mode, map_kernel_size, task_chunk, map_pooling, map_activation, task_head)
    if head == "multitask":
        return build_multitask_network(backbone, num_classes, in_chans, attention_mode, branch_depth, task_chunk,
                                       map_pooling, map_activation, task_head)
    last_stage, channels = backbone.last_stage, backbone.channels
    if head == "cam":
        classifier = None if backbone.cam_stage else backbone.gap_linear
        if backbone.cam_stage:
            last_stage, channels = backbone.cam_stage()
    else:  # the backbone's classifier is built before the branch: the order in which weights are drawn
        classifier = backbone.classifier() if backbone.classifier else backbone.gap_linear
    branch = None
    if head == "abn":
        blocks = branch_block_count(backbone, branch_depth)
        branch_channels = backbone.branch_channels(blocks) if backbone.branch_channels else backbone.channels
        branch = AttentionBranch(backbone.branch_stage(blocks), branch_channels, num_classes, map_kernel_size)
    if classifier is None:
        classifier = GapLinearHead(channels, num_classes)
    network = AttentionBranchNetwork(
        backbone.features, last_stage, classifier, in_chans, num_classes, branch, attention_mode, head_name=head
    )
    if backbone.initialise is not None:
        backbone.initialise(network)
    elif branch is not None:
        branch.init_new_layers()
    return network


def build_multitask_network(backbone: Backbone, num_tasks: int, in_chans: int, attention_mode: str,
                            branch_depth: BranchDepth, task_chunk: Optional[int], map_pooling: str,
                            map_activation: str, task_head: str) -> MultiTaskNetwork:
    """The multi-task ABN of ``backbone``: its own classifier is replaced by GAP + one linear head per attribute."""
    blocks = branch_block_count(backbone, branch_depth)
    branch_channels = backbone.branch_channels(blocks) if backbone.branch_channels else backbone.channels
    branch = MultiTaskAttentionBranch(backbone.branch_stage(blocks), branch_channels, num_tasks, map_pooling,
                                      map_activation)
    heads = TaskHeads(backbone.channels, num_tasks, outputs=2 if task_head == "two_way" else 1)
    network = MultiTaskNetwork(backbone.features, branch, backbone.last_stage, heads, in_chans, num_tasks,
                               attention_mode, task_chunk)
    if backbone.initialise is not None:
        backbone.initialise(network)
    branch.init_new_layers()  # after the family's initialisation, which would give the maps a convolution's scale
    return network
