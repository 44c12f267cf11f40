"""Every arch × head of abn.models: shapes, map range, gradients, the attention rule, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from abn.explain import explain
from abn.models import HEADS, ABNOutput, AttentionBranchNetwork, Backbone, build_network, create_model, list_models, model_info

ARCHS = list_models()
# Narrower or shallower versions of the big models, for the tests that run backward (builder options).
SMALL = {
    "densenet_bc100": {"depth": 40},
    "wrn16_8": {"widen_factor": 1},
    "wrn28_10": {"widen_factor": 1},
    "wrn40_4": {"widen_factor": 1},
    "resnext29_8x64d": {"base_channels": 8},
    "resnext29_16x64d": {"base_channels": 8},
    "vgg16_bn_cifar": {"width": 16},
}


def input_size(arch: str) -> int:
    """32 for the CIFAR-size archs; 64 (small but enough stages to keep a spatial map) for the ImageNet ones."""
    return 32 if model_info(arch).input_size <= 64 else 64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def abn_loss(out: ABNOutput, labels: torch.Tensor) -> torch.Tensor:
    """The module's loss: cross-entropy on class labels, binary cross-entropy on multi-hot attribute labels."""
    criterion = F.cross_entropy if labels.dim() == 1 else F.binary_cross_entropy_with_logits
    loss = criterion(out.logits, labels)
    return loss if out.att_logits is None else loss + criterion(out.att_logits, labels)


def labels_for(head: str, classes: list[int]) -> torch.Tensor:
    """Class labels, or for the multitask head the same classes as multi-hot attribute vectors."""
    labels = torch.tensor(classes)
    return F.one_hot(labels, max(classes) + 1).float() if head == "multitask" else labels


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("arch", ARCHS)
def test_output_shapes_and_map(arch, head):
    size = input_size(arch)
    model = create_model(arch, head=head, num_classes=7).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = model(x)
        g = model.features(x)
    assert isinstance(out, ABNOutput) and model.head_name == head
    assert out.logits.shape == (2, 7) and torch.isfinite(out.logits).all()
    if head == "abn":
        assert out.att_logits.shape == (2, 7)
        # one map per image at the resolution of the features it weights
        assert out.attention.shape == (2, 1, *g.shape[-2:])
        assert out.attention.min() >= 0 and out.attention.max() <= 1
    elif head == "multitask":  # one map per attribute, raw (the authors' maps have no sigmoid)
        assert out.att_logits.shape == (2, 7) and out.attention.shape == (2, 7, *g.shape[-2:])
        torch.testing.assert_close(out.att_logits, out.attention.amax(dim=(2, 3)))
    else:
        assert out.att_logits is None and out.attention is None
        assert model.attention_branch is None


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_reaches_every_parameter_and_a_step_lowers_the_loss(arch, head):
    size = input_size(arch)
    model = create_model(arch, head=head, num_classes=5, **SMALL.get(arch, {}))
    x, labels = torch.randn(4, 3, size, size), labels_for(head, [1, 3, 0, 4])
    abn_loss(model(x), labels).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"
    # the step is checked in eval mode: batch statistics of 4 tiny images make the train-mode loss too rough
    # for a first-order step to be sure to descend
    model.eval().zero_grad()
    loss = abn_loss(model(x), labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    torch.optim.SGD(model.parameters(), lr=1e-3).step()
    with torch.no_grad():
        assert abn_loss(model(x), labels) < loss


@pytest.mark.parametrize("arch", ARCHS)
def test_light_branch_copies_one_block(arch):
    size = input_size(arch)
    full = create_model(arch, head="abn", num_classes=5, **SMALL.get(arch, {}))
    light = create_model(arch, head="abn", num_classes=5, branch_depth="light", **SMALL.get(arch, {}))
    count = lambda m: sum(p.numel() for p in m.attention_branch.parameters())  # noqa: E731
    assert count(light) < count(full)
    with torch.no_grad():
        assert light.eval()(torch.randn(1, 3, size, size)).attention.shape == full.eval()(torch.randn(1, 3, size, size)).attention.shape
    with pytest.raises(ValueError, match="branch_depth must be 'full', 'light' or a block count"):
        create_model(arch, head="abn", branch_depth=0, **SMALL.get(arch, {}))


@pytest.mark.parametrize("size", [(20, 20), (40, 24), (64, 64)])
def test_any_input_size_and_channel_count(size):
    model = create_model("resnet20", head="abn", num_classes=4, in_chans=1).eval()
    out = model(torch.randn(3, 1, *size))
    assert out.logits.shape == (3, 4)
    assert out.attention.shape[-2:] == tuple((s + 1) // 2 for s in size)


@pytest.mark.parametrize("mode", ["residual", "multiply"])
def test_attention_rule_on_a_hand_made_map(mode):
    model = create_model("resnet20", head="abn", num_classes=3, attention_mode=mode).eval()
    x = torch.randn(2, 3, 32, 32)
    hand_made = torch.zeros(2, 1, 16, 16)
    hand_made[:, :, 4:8, 4:8] = 0.75
    branch_forward = model.attention_branch.forward

    def with_hand_made_map(g):
        att_logits, _, class_maps = branch_forward(g)
        return att_logits, hand_made, class_maps

    model.attention_branch.forward = with_hand_made_map
    with torch.no_grad():
        out = model(x)
        g = model.features(x)
        weighted = g * (1 + hand_made) if mode == "residual" else g * hand_made
        expected = model.head(model.last_stage(weighted))
    torch.testing.assert_close(out.logits, expected)
    assert torch.equal(out.attention, hand_made)
    # and the rule matters: the map really changes the prediction path
    with torch.no_grad():
        unweighted = model.head(model.last_stage(g))
    assert not torch.allclose(out.logits, unweighted)


def test_perception_input_is_unchanged_where_the_map_is_zero():
    """g·(1+M) = g where M = 0: the residual rule keeps features the branch ignores."""
    model = create_model("resnet20", head="abn", num_classes=3).eval()
    zero = torch.zeros(1, 1, 16, 16)
    model.attention_branch.forward = lambda g: (torch.zeros(1, 3), zero, torch.zeros(1, 3, *zero.shape[-2:]))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x).logits, model.head(model.last_stage(model.features(x))))


@pytest.mark.parametrize("head", ["cam", "abn", "baseline"])
def test_class_activation_map_averages_to_the_class_score(head):
    model = create_model("resnet20", head=head, num_classes=6).eval()
    x = torch.randn(4, 3, 32, 32)
    target = torch.tensor([0, 5, 2, 2])
    with torch.no_grad():
        logits = model(x).logits
    cam = explain(model, x, "cam", targets=target, raw=True)
    assert cam.shape == (4, 8, 8)
    torch.testing.assert_close(cam.mean(dim=(1, 2)), logits[torch.arange(4), target])


def test_official_bottleneck_resnet110_size():
    """The official code's "ResNet-110" is the 164-layer bottleneck layout: about 1.7 M parameters."""
    baseline = create_model("resnet110_bottleneck", head="baseline", num_classes=10)
    blocks = sum(1 for m in baseline.modules() if type(m).__name__ == "Bottleneck")
    assert blocks == 3 * 18
    assert 1.65e6 < sum(p.numel() for p in baseline.parameters()) < 1.75e6
    he_110 = create_model("resnet110", head="baseline", num_classes=10)
    assert sum(1 for m in he_110.modules() if type(m).__name__ == "BasicBlock") == 3 * 18


def test_abn_adds_exactly_the_branch():
    baseline = create_model("resnet56", head="baseline")
    abn = create_model("resnet56", head="abn")
    branch = sum(p.numel() for p in abn.attention_branch.parameters())
    total = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert total(abn) == total(baseline) + branch
    assert isinstance(abn, AttentionBranchNetwork) and abn.head_name == "abn"


def test_map_kernel_size_option():
    model = create_model("resnet20", head="abn", map_kernel_size=1)
    assert model.attention_branch.map_conv.kernel_size == (1, 1)
    with pytest.raises(ValueError, match="map_kernel_size"):
        create_model("resnet20", head="abn", map_kernel_size=5)


def test_pretrained_on_an_arch_without_weights_names_those_with_weights():
    with pytest.raises(ValueError, match="resnet20.*has no pretrained weights; pretrained=true applies to"):
        create_model("resnet20", pretrained=True)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid archs: .*resnet20"):
        create_model("resnet21")
    with pytest.raises(ValueError, match="valid heads: baseline, cam, abn"):
        create_model("resnet20", head="gradcam")
    with pytest.raises(ValueError, match="residual, multiply"):
        create_model("resnet20", attention_mode="add")


def test_wrong_channel_count_is_a_clear_error():
    model = create_model("resnet20", head="abn", in_chans=3)
    with pytest.raises(ValueError, match=r"B×3×H×W, got \(2, 1, 32, 32\).*in_chans=1"):
        model(torch.randn(2, 1, 32, 32))


def test_cam_needs_a_gap_linear_head():
    model = create_model("resnet20", head="cam")
    model.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    with pytest.raises(ValueError, match="'cam' does not apply .*GAP \\+ linear head"):
        explain(model, torch.randn(1, 3, 32, 32), "cam", raw=True)


def test_unknown_family_options_name_the_valid_ones():
    with pytest.raises(ValueError, match="resnet20 has no option dropout; its options: attention_mode, map_kernel_size"):
        create_model("resnet20", dropout=0.1)
    with pytest.raises(ValueError, match="wrn16_8 has no option width; its options: depth, widen_factor, dropout"):
        create_model("wrn16_8", width=16)


def tiny_backbone(num_classes: int, in_chans: int) -> Backbone:
    """A two-block backbone written as a new family would be: its parts only, nothing about heads."""

    def stage(blocks: int, stride: int) -> torch.nn.Sequential:
        return torch.nn.Sequential(
            *[torch.nn.Conv2d(8, 8, 3, stride=stride if i == 0 else 1, padding=1) for i in range(blocks)]
        )

    features = torch.nn.Sequential(torch.nn.Conv2d(in_chans, 8, 3, padding=1), torch.nn.ReLU())
    return Backbone(features, stage(2, 2), channels=8, branch_stage=lambda blocks: stage(blocks, 1), num_blocks=2)


@pytest.mark.parametrize("head", HEADS)
def test_build_network_gives_every_head_of_a_new_backbone(head):
    net = build_network(tiny_backbone(4, 1), head, num_classes=4, in_chans=1, branch_depth="light").eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, 16, 16))
    assert out.logits.shape == (2, 4) and net.head_name == head
    if head in ("abn", "multitask"):  # at the features' resolution; one map, or one per attribute
        assert out.attention.shape == (2, 1 if head == "abn" else 4, 16, 16) and out.att_logits.shape == (2, 4)
        assert len(net.attention_branch.stage) == 1  # light: one block of the last stage
    else:
        assert out.attention is None and net.attention_branch is None


def test_build_network_checks_the_head_options():
    with pytest.raises(ValueError, match="residual, multiply"):
        build_network(tiny_backbone(4, 3), "abn", 4, 3, attention_mode="add")
    with pytest.raises(ValueError, match="block count from 1 to 2"):
        build_network(tiny_backbone(4, 3), "abn", 4, 3, branch_depth=3)
