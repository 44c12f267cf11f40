"""Any torchvision CNN as a baseline, CAM or ABN network, cut after a module the user names.

    create_model("torchvision:resnet50", head="abn", split="layer3")
    create_model("torchvision:convnext_tiny", head="abn", split="features.5", pretrained=True)

The model is traced with torch.fx. ``features`` is the graph up to the output of the ``split`` module; the
``last_stage`` runs from there to the global pooling; the ``head`` is the rest (pooling, flatten, classifier). The
attention branch copies the last stage with every convolution stride set to 1 and every down-sampling pool removed,
so the map keeps the resolution of the features it weights; where such a copy is not size-preserving (ConvNeXt's
2×2 patch-merging convolution) the map is resized to them bilinearly. The copy is taken after ``pretrained``
weights are loaded, so it starts from ImageNet weights too. ``cam`` replaces the head by GAP + linear (for VGG this
drops the fully connected layers).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .network import Backbone, stride_one_copy
from .pretrained import adapt_first_conv, torchvision_model

PROBE_SIZE = 64  # input side of the shape-finding forward pass
GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
GLOBAL_POOL_FUNCTIONS: tuple[Callable, ...] = (F.adaptive_avg_pool2d, F.adaptive_max_pool2d)


def _module_path(node: fx.Node) -> list[str]:
    """Qualified names of the modules a node ran inside, outermost first (``@n`` call suffixes removed)."""
    return [path.split("@")[0] for path in node.meta.get("nn_module_stack", {})]


def _is_4d(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "shape") and len(meta.shape) == 4


def _is_global_pool(node: fx.Node, root: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(root.get_submodule(node.target), GLOBAL_POOLS)
    return node.op == "call_function" and node.target in GLOBAL_POOL_FUNCTIONS


class _Graph:
    """The traced model, its nodes in order, their shapes, and where each module's output is."""

    def __init__(self, net: nn.Module, in_chans: int):
        self.net = net
        self.module = fx.symbolic_trace(net)
        was_training = net.training
        self.module.eval()
        with torch.no_grad():
            ShapeProp(self.module).propagate(torch.zeros(1, in_chans, PROBE_SIZE, PROBE_SIZE))
        net.train(was_training)
        self.nodes = [n for n in self.module.graph.nodes if n.op != "output"]
        self.index = {node: i for i, node in enumerate(self.nodes)}
        self.last_node_of: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for path in _module_path(node):
                self.last_node_of[path] = i
        # the first value computed from the image that is a tensor but not a B×C×h×w map (e.g. the flatten)
        live = {self.nodes[0]}
        self.flat_at = len(self.nodes)
        for i, node in enumerate(self.nodes[1:], start=1):
            if not any(source in live for source in node.all_input_nodes):
                continue
            live.add(node)
            meta = node.meta.get("tensor_meta")
            if hasattr(meta, "shape") and len(meta.shape) != 4:
                self.flat_at = i
                break

    def clean_after(self, cut: int) -> Optional[tuple[fx.Node, fx.Node]]:
        """None when every node after ``cut`` reads only nodes from ``cut`` on; else (reader, value read)."""
        for node in self.nodes[cut + 1 :]:
            for source in node.all_input_nodes:
                if self.index[source] < cut:
                    return node, source
        return None

    def pool_at(self, cut: int) -> int:
        """Index where the head starts: the last global pooling before the first non-spatial value."""
        pools = [i for i in range(cut + 1, self.flat_at) if _is_global_pool(self.nodes[i], self.module)]
        return pools[-1] if pools else self.flat_at

    def has_conv_between(self, start: int, stop: int) -> bool:
        return any(
            n.op == "call_module" and isinstance(self.module.get_submodule(n.target), nn.Conv2d)
            for n in self.nodes[start:stop]
        )

    def split_candidates(self) -> list[str]:
        """Module names that make a valid split: a spatial output, a clean cut, a convolution after it."""
        names = []
        for name, module in self.net.named_modules():
            if not name or name.count(".") > 1 or name not in self.last_node_of:
                continue
            cut = self.last_node_of[name]
            if _is_4d(self.nodes[cut]) and cut < self.flat_at and self.clean_after(cut) is None:
                if self.has_conv_between(cut + 1, self.pool_at(cut)):
                    names.append(name)
        return names

    def submodule(self, start: int, stop: int, output: fx.Node) -> fx.GraphModule:
        """Nodes ``start``..``stop-1`` as a module whose one input replaces node ``start - 1``."""
        graph = fx.Graph()
        env = {self.nodes[start - 1]: graph.placeholder("x")}
        for node in self.nodes[start:stop]:
            env[node] = graph.node_copy(node, lambda n: env[n])
        graph.output(env[output])
        return fx.GraphModule(self.module, graph)


def _replace_last_linear(head: fx.GraphModule, num_classes: int, name: str) -> None:
    linears = [n.target for n in head.graph.nodes if n.op == "call_module" and isinstance(head.get_submodule(n.target), nn.Linear)]
    if not linears:
        raise ValueError(f"torchvision:{name} has no final nn.Linear to resize to {num_classes} classes; use head=cam")
    old = head.get_submodule(linears[-1])
    if old.out_features != num_classes:
        parent_name, _, child = linears[-1].rpartition(".")
        setattr(head.get_submodule(parent_name) if parent_name else head, child, nn.Linear(old.in_features, num_classes))


def _first_conv_name(net: nn.Module) -> str:
    return next(name for name, m in net.named_modules() if isinstance(m, nn.Conv2d))


def torchvision_backbone(
    name: str, num_classes: int = 1000, in_chans: int = 3, pretrained: bool = False, split: Optional[str] = None
) -> Backbone:
    """torchvision model ``name`` cut after module ``split`` (see the module docstring)."""
    net = torchvision_model(name, pretrained)
    if in_chans != 3:
        conv_name = _first_conv_name(net)
        parent_name, _, child = conv_name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child, adapt_first_conv(getattr(parent, child), in_chans))
    graph = _Graph(net, in_chans)

    def refuse(problem: str) -> ValueError:
        return ValueError(f"torchvision:{name}: {problem}; valid split names: {', '.join(graph.split_candidates())}")

    if split is None:
        raise refuse("give split=<module name>, the module after which the network is cut")
    if split not in graph.last_node_of:
        raise refuse(f"split={split!r} names no module of the network")
    cut = graph.last_node_of[split]
    if not _is_4d(graph.nodes[cut]) or cut >= graph.flat_at:
        raise refuse(f"split={split!r} does not output a spatial B×C×h×w map")
    crossing = graph.clean_after(cut)
    if crossing is not None:
        reader, value = crossing
        raise refuse(f"split={split!r} is not a clean cut: {reader.name} after it reads {value.name} from before it")
    pool = graph.pool_at(cut)
    if not graph.has_conv_between(cut + 1, pool):
        raise refuse(f"split={split!r} is not followed by a spatial stage (nothing but the classifier is left)")
    stage_output = graph.nodes[pool - 1]
    if graph.clean_after(pool - 1) is not None:
        raise refuse(f"the classifier after split={split!r} reads more than the last stage's output")

    last_stage = graph.submodule(cut + 1, pool, stage_output)

    def classifier() -> nn.Module:
        head = graph.submodule(pool, len(graph.nodes), graph.nodes[-1])
        _replace_last_linear(head, num_classes, name)
        return head

    return Backbone(
        features=graph.submodule(1, cut + 1, graph.nodes[cut]),
        last_stage=last_stage,
        channels=stage_output.meta["tensor_meta"].shape[1],
        branch_stage=lambda _: stride_one_copy(last_stage),
        num_blocks=None,
        classifier=classifier,
    )
