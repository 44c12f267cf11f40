"""Relevance-CAM: conservation of relevance, the split at residual additions, the project's and torchvision's
ResNets, and that a call leaves the model as it found it."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
import torchvision
from torch import Tensor, nn

from abn.explain.relevance import layer_relevance, relevance_cam
from abn.models import create_model


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tensors this small gain nothing from a second thread, whose spin-waits cost seconds on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def conv_stack(bias: bool = False, batch_norm: bool = False) -> nn.Sequential:
    """Conv/ReLU/max-pool/avg-pool stack with a GAP + linear head, in float64 for tight sums."""

    def conv(cin: int, cout: int) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=bias)]
        return layers + [nn.BatchNorm2d(cout)] if batch_norm else layers

    torch.manual_seed(0)
    model = nn.Sequential(
        *conv(3, 8), nn.ReLU(), nn.MaxPool2d(2),
        *conv(8, 8), nn.ReLU(inplace=True), nn.AvgPool2d(2),
        *conv(8, 8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5, bias=bias),
    ).double()
    randomise_batch_norm(model)
    return model.eval()


def randomise_batch_norm(model: nn.Module) -> None:
    """Running statistics and affine parameters as after training, so that BatchNorm is not the identity."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(0.3 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
                module.weight.copy_(0.5 + torch.rand(shape, generator=generator))
                module.bias.copy_(0.2 * torch.randn(shape, generator=generator))


def positive_images(batch: int = 2, size: int = 16) -> Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def spatial_layer_names(model: nn.Sequential) -> list[str]:
    return [name for name, module in model.named_children() if not isinstance(module, (nn.Flatten, nn.Linear))]


def layer_sums(relevance: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: r.sum(dim=(1, 2, 3)) for name, r in relevance.items()}


@pytest.mark.parametrize("rule", ["z", "z+"])
def test_target_start_conserves_the_target_logit_at_every_layer(rule):
    model = conv_stack()
    images, targets = positive_images(), torch.tensor([1, 3])
    logits = model(images)
    relevance, _ = layer_relevance(model, images, targets, spatial_layer_names(model), rule=rule, start="target")
    target_logit = logits[torch.arange(2), targets].detach()
    assert len(relevance) == 9
    for name, total in layer_sums(relevance).items():
        torch.testing.assert_close(total, target_logit, rtol=1e-4, atol=1e-10, msg=f"layer {name}")


@pytest.mark.parametrize("rule", ["z", "z+"])
def test_contrastive_start_sums_to_the_same_total_at_every_layer(rule):
    model = conv_stack()
    relevance, _ = layer_relevance(model, positive_images(), torch.tensor([0, 4]), spatial_layer_names(model), rule=rule)
    # +1 at the target and −1/(N−1) at each other class sum to zero: every layer must sum to zero as well
    # (relative to the relevance's size; the 1e-9 stabiliser leaks a little)
    for name, r in relevance.items():
        scale = r.abs().sum(dim=(1, 2, 3))
        assert (scale > 0).all(), name
        assert (r.sum(dim=(1, 2, 3)).abs() <= 1e-4 * scale).all(), name


def test_contrastive_start_is_the_target_relevance_minus_the_mean_of_the_others():
    model = conv_stack()
    images, target = positive_images(batch=1), 2
    logits = model(images).detach()[0]
    layers = ["0", "4", "8"]
    contrastive, _ = layer_relevance(model, images, torch.tensor([target]), layers)
    per_class = [layer_relevance(model, images, torch.tensor([c]), layers, start="target")[0] for c in range(5)]
    for name in layers:
        # with start="target" class c starts from its logit; divide it out for a unit start
        unit = [per_class[c][name] / logits[c] for c in range(5)]
        expected = unit[target] - sum(unit[c] for c in range(5) if c != target) / 4
        torch.testing.assert_close(contrastive[name], expected, rtol=1e-4, atol=1e-8)


def test_z_plus_rule_conserves_relevance_through_batch_norm_and_biases():
    model = conv_stack(bias=True, batch_norm=True)
    images, targets = positive_images(), torch.tensor([2, 0])
    target_logit = model(images)[torch.arange(2), targets].detach()
    names = spatial_layer_names(model)
    relevance_z_plus, _ = layer_relevance(model, images, targets, names, rule="z+", start="target")
    for name, total in layer_sums(relevance_z_plus).items():
        torch.testing.assert_close(total, target_logit, rtol=1e-4, atol=1e-10, msg=f"layer {name}")
    # the plain gradient lets biases absorb relevance: the rules really differ here
    relevance_z, _ = layer_relevance(model, images, targets, names, rule="z", start="target")
    assert not torch.allclose(relevance_z["0"].sum(dim=(1, 2, 3)), target_logit, rtol=1e-3)


def test_z_plus_relevance_of_a_positive_score_is_never_negative():
    # α1β0 keeps only the contributions of the score's sign (x⁺W⁺ and x⁻W⁻, both ≥ 0), whatever the inputs' signs;
    # here convolutions and average pooling also see negative inputs (no ReLU in between)
    torch.manual_seed(10)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.AvgPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).double()
    randomise_batch_norm(model)
    model.eval()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    logits = model(images)
    targets = logits.argmax(dim=1)
    assert (logits[torch.arange(2), targets] > 0).all()
    names = ["0", "1", "2", "3", "4", "5"]
    relevance_z_plus, activations = layer_relevance(model, images, targets, names, rule="z+", start="target")
    for name, r in relevance_z_plus.items():
        assert (r >= 0).all(), name
        assert (r > 0).any(), name
    # a negative input times a negative weight is a positive contribution: it gets relevance too
    assert (relevance_z_plus["1"][activations["1"] < 0] > 0).any()
    # conserved from the logit down to the pooling output (its windows of negative inputs absorb relevance)
    for name in ["1", "2", "3", "4", "5"]:
        total = relevance_z_plus[name].sum(dim=(1, 2, 3))
        torch.testing.assert_close(total, logits[torch.arange(2), targets].detach(), rtol=1e-4, atol=1e-10)
    relevance_z, _ = layer_relevance(model, images, targets, names, rule="z", start="target")
    assert (relevance_z["0"] < 0).any()


@pytest.mark.parametrize("head", ["abn", "cam"])
def test_z_plus_conserves_the_target_logit_through_the_project_resnet(head):
    # for head="abn" the attention map gates the features: a gate passes all relevance on and takes none
    model = freeze(project_resnet20(head))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    logits = model(images).logits
    targets = logits.argmax(dim=1)
    names = ["features.layer1", "features", "last_stage.0", "last_stage"]
    relevance, _ = layer_relevance(model, images, targets, names, rule="z+", start="target")
    target_logit = logits[torch.arange(2), targets]
    for name, total in layer_sums(relevance).items():
        torch.testing.assert_close(total, target_logit, rtol=1e-3, atol=1e-5, msg=f"layer {name}")


class ResidualBlock(nn.Module):
    """``out = branch(x); out += shortcut(x)``: the addition is in place and no module."""

    def __init__(self, channels: int, identity_shortcut: bool):
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 3, padding=1)
        )
        self.shortcut = nn.Identity() if identity_shortcut else nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(x)
        out += self.shortcut(x)
        return out


def residual_model(identity_shortcut: bool) -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True),
        ResidualBlock(6, identity_shortcut), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
    ).double().eval()


@pytest.mark.parametrize("identity_shortcut", [False, True])
@pytest.mark.parametrize("rule", ["z", "z+"])
def test_residual_addition_splits_relevance_by_contribution(rule, identity_shortcut):
    model = residual_model(identity_shortcut)
    images = positive_images()
    block = model[2]
    relevance, activations = layer_relevance(
        model, images, torch.tensor([1, 2]), ["2", "2.branch", "2.shortcut"], rule=rule
    )
    whole, branch, shortcut = relevance["2"], relevance["2.branch"], relevance["2.shortcut"]
    assert whole.abs().sum() > 0
    torch.testing.assert_close(branch + shortcut, whole, rtol=1e-6, atol=1e-12)
    # R_branch / R_shortcut = branch_out / shortcut_out, written without division
    branch_out, shortcut_out = activations["2.branch"], activations["2.shortcut"]
    torch.testing.assert_close(branch * shortcut_out, shortcut * branch_out, rtol=1e-6, atol=1e-12)
    # the activations are the values before the in-place addition
    with torch.no_grad():
        stem = model[1](model[0](images))
        torch.testing.assert_close(branch_out, block.branch(stem.clone()))
        torch.testing.assert_close(shortcut_out, block.shortcut(stem.clone()))


def project_resnet20(head: str) -> nn.Module:
    torch.manual_seed(4)
    model = create_model("resnet20", head=head, num_classes=10, in_chans=3)
    randomise_batch_norm(model)
    return model.eval()


def torchvision_resnet18() -> nn.Module:
    torch.manual_seed(5)
    model = torchvision.models.resnet18(num_classes=10)
    randomise_batch_norm(model)
    return model.eval()


def freeze(model: nn.Module) -> nn.Module:
    """What the caller (abn.explain.explain) does before calling in."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


RESNET20_LAYERS = {"features.layer1": (16, 32), "features.layer2": (32, 16), "last_stage": (64, 8)}
RESNET18_LAYERS = {"layer2": (128, 8), "layer4": (512, 2)}


@pytest.mark.parametrize(
    "build, size, layer_shapes",
    [
        (lambda: project_resnet20("abn"), 32, RESNET20_LAYERS),
        (lambda: project_resnet20("cam"), 32, RESNET20_LAYERS),
        (torchvision_resnet18, 64, RESNET18_LAYERS),
    ],
    ids=["resnet20-abn", "resnet20-cam", "torchvision-resnet18"],
)
def test_maps_on_real_resnets(build, size, layer_shapes):
    model = freeze(build())
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(6))
    output = model(images)
    predicted = (output.logits if hasattr(output, "logits") else output).argmax(dim=1)
    maps = relevance_cam(model, images, predicted, list(layer_shapes))
    assert list(maps) == list(layer_shapes)
    for name, (channels, side) in layer_shapes.items():
        assert maps[name].shape == (2, side, side)
        assert torch.isfinite(maps[name]).all()
        for sample_map in maps[name]:
            assert sample_map.max() > sample_map.min(), f"constant map at {name}"


def test_relevance_cam_weights_channels_by_their_mean_relevance():
    model = residual_model(identity_shortcut=False)
    images, targets = positive_images(), torch.tensor([3, 0])
    layers = ["1", "2.branch", "3"]
    relevance, activations = layer_relevance(model, images, targets, layers, rule="z+", start="contrastive")
    maps = relevance_cam(model, images, targets, layers)
    for name in layers:
        assert relevance[name].shape == activations[name].shape == (2, 6, 16, 16)
        expected = torch.relu(torch.einsum("bc,bchw->bhw", relevance[name].mean(dim=(2, 3)), activations[name]))
        torch.testing.assert_close(maps[name], expected)


def test_target_class_changes_the_map():
    model = freeze(project_resnet20("abn"))
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    first = relevance_cam(model, images, torch.tensor([0, 0]), ["features.layer2"])["features.layer2"]
    second = relevance_cam(model, images, torch.tensor([5, 5]), ["features.layer2"])["features.layer2"]
    for a, b in zip(first, second):
        assert not torch.allclose(a, b, rtol=1e-3, atol=1e-6 * float(a.abs().max()))


def hook_counts(model: nn.Module) -> dict[str, int]:
    return {name: len(m._forward_hooks) + len(m._forward_pre_hooks) for name, m in model.named_modules()}


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen-by-caller", "trainable-parameters"])
def test_call_leaves_the_model_as_it_was(frozen):
    model = project_resnet20("abn")
    if frozen:
        freeze(model)
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    before = model(images)
    hooks_before = hook_counts(model)
    with torch.no_grad():  # the caller may be in no_grad
        maps = relevance_cam(model, images, torch.tensor([1, 2]), ["features.layer1", "last_stage"])
    assert maps["last_stage"].abs().sum() > 0
    assert hook_counts(model) == hooks_before
    assert all(parameter.grad is None for parameter in model.parameters())
    after = model(images)
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    # an error raised half-way through the forward pass (a 2-D layer) removes the hooks as well
    with pytest.raises(ValueError, match="head"):
        layer_relevance(model, images, torch.tensor([1, 2]), ["features.layer1", "head"])
    assert hook_counts(model) == hooks_before


def live_tensor_count() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch's deprecated aliases warns
        warnings.simplefilter("ignore")
        return sum(1 for obj in gc.get_objects() if isinstance(obj, Tensor))


def test_repeated_calls_do_not_keep_tensors_alive():
    model = freeze(residual_model(identity_shortcut=False))
    images, targets = positive_images(), torch.tensor([0, 1])
    relevance_cam(model, images, targets, ["0", "2"])
    baseline = live_tensor_count()
    for _ in range(20):
        relevance_cam(model, images, targets, ["0", "2"])
    assert live_tensor_count() == baseline


def test_bad_arguments_are_named():
    model = residual_model(identity_shortcut=True)
    images, targets = positive_images(), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="unknown layer '2.brnch'.*2.branch"):
        layer_relevance(model, images, targets, ["2.brnch"])
    with pytest.raises(ValueError, match="layers is empty"):
        layer_relevance(model, images, targets, [])
    with pytest.raises(ValueError, match="'6' outputs \\(2, 4\\)"):
        layer_relevance(model, images, targets, ["6"])
    with pytest.raises(ValueError, match="unknown rule 'alpha2beta1'"):
        layer_relevance(model, images, targets, ["2"], rule="alpha2beta1")
    with pytest.raises(ValueError, match="unknown start"):
        layer_relevance(model, images, targets, ["2"], start="one-hot")
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 4\)"):
        layer_relevance(model, images, torch.tensor([0, 4]), ["2"])
    with pytest.raises(ValueError, match="targets must be 2 integer class indices"):
        layer_relevance(model, images, torch.tensor([0]), ["2"])
    with pytest.raises(ValueError, match="images must be a float tensor"):
        layer_relevance(model, images[0], targets, ["2"])
