"""abn.explain.explain: every method on every head and on plain torchvision CNNs, agreement with Captum, the model
left as it was, differentiable maps, and the bad inputs."""

from __future__ import annotations

import gc

import pytest
import torch
import torchvision
from torch import nn

from abn.explain import METHODS, applicable_methods, explain
from abn.models import HEADS, create_model, list_models, model_info

captum_attr = pytest.importorskip("captum.attr")

NEEDS_LAYER = ("cam", "gradcam", "gradcam++", "counterfactual", "relevance_cam")


def tiny(head: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet20", head=head, num_classes=5)


def torchvision_resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5)


class Scores(nn.Module):
    """Captum wants a model returning a tensor."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        out = self.net(x)
        return out.logits if hasattr(out, "logits") else out


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_which_methods_apply_to_each_head():
    assert applicable_methods(tiny("abn")) == list(METHODS)
    assert "abn" not in applicable_methods(tiny("cam")) and "cam" in applicable_methods(tiny("cam"))
    vgg = create_model("vgg16_bn_cifar", head="abn", num_classes=5)  # its classifier is GAP + linear: cam applies
    assert "cam" in applicable_methods(vgg)
    assert "cam" not in applicable_methods(torchvision.models.vgg11(num_classes=5))
    assert "cam" in applicable_methods(torchvision_resnet())


@pytest.mark.parametrize("head", HEADS)
def test_every_method_on_every_head(head, images):
    net = tiny(head)
    for method in applicable_methods(net):
        maps = explain(net, images, method)
        assert maps.shape == (3, 32, 32), method
        assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, method
        raw = explain(net, images, method, raw=True)
        if method in ("guided_backprop", "guided_gradcam"):
            assert raw.shape == images.shape
        elif method == "abn":
            assert raw.shape == (3, 16, 16)  # the attention map's own resolution
        elif method in NEEDS_LAYER:
            assert raw.shape == (3, 8, 8)  # last_stage of a CIFAR ResNet at 32 px


def test_plain_torchvision_cnns(images):
    resnet = torchvision_resnet()
    assert explain(resnet, images, "gradcam", raw=True).shape == (3, 1, 1)  # layer4 at 32 px
    densenet = torchvision.models.densenet121(num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    assert explain(densenet, x, "gradcam++", raw=True).shape == (2, 2, 2)  # "features", the default layer
    assert explain(densenet, x, "relevance_cam", layer="features.denseblock2").shape == (2, 64, 64)


def test_several_layers_at_once_and_any_layer_by_name(images):
    net = tiny("cam")
    maps = explain(net, images, "gradcam", layer=["features.layer1", "features.layer2", "last_stage"], raw=True)
    assert {name: m.shape[-1] for name, m in maps.items()} == {"features.layer1": 32, "features.layer2": 16, "last_stage": 8}
    one = explain(net, images, "gradcam", layer="features.layer2", raw=True)
    torch.testing.assert_close(one, maps["features.layer2"])
    assert explain(net, images, "gradcam", layer="features.layer1.0.conv1").shape == (3, 32, 32)


def test_targets_default_to_the_prediction_and_can_be_chosen(images):
    net = tiny("cam")
    with torch.no_grad():
        predicted = net.eval()(images).logits.argmax(1)
    torch.testing.assert_close(explain(net, images, "cam", raw=True), explain(net, images, "cam", targets=predicted, raw=True))
    other = (predicted + 1) % 5
    assert not torch.allclose(explain(net, images, "cam", raw=True), explain(net, images, "cam", targets=other, raw=True))
    torch.testing.assert_close(explain(net, images, "gradcam", targets=2, raw=True),
                               explain(net, images, "gradcam", targets=torch.full((3,), 2), raw=True))


def test_cam_is_the_weighted_sum_of_the_heads_feature_maps(images):
    net = tiny("cam").eval()
    targets = torch.tensor([0, 3, 4])
    with torch.no_grad():
        feature_map = net.last_stage(net.features(images))  # no attention branch between them in a cam network
    fc = net.head.fc  # Σ_k w_k^c A^k + b_c
    expected = torch.einsum("bk,bkhw->bhw", fc.weight[targets], feature_map) + fc.bias[targets][:, None, None]
    torch.testing.assert_close(explain(net, images, "cam", targets=targets, raw=True), expected)
    # its spatial mean is the class score
    torch.testing.assert_close(expected.mean(dim=(1, 2)), net(images).logits.gather(1, targets[:, None])[:, 0])


def test_abn_map_is_the_forward_attention(images):
    net = tiny("abn").eval()
    with torch.no_grad():
        attention = net(images).attention[:, 0]
    torch.testing.assert_close(explain(net, images, "abn", raw=True), attention)


@pytest.mark.parametrize("make", [lambda: tiny("abn"), torchvision_resnet], ids=["resnet20-abn", "torchvision-resnet18"])
def test_agreement_with_captum(make, images):
    net = make().eval()
    layer_name = "last_stage" if hasattr(net, "last_stage") else "layer4"
    layer = net.get_submodule(layer_name)
    scores = Scores(net)
    targets = torch.tensor([1, 4, 2])
    inputs = images.clone().requires_grad_()
    expected = captum_attr.LayerGradCam(scores, layer).attribute(inputs, target=targets, relu_attributions=True)[:, 0]
    torch.testing.assert_close(explain(net, images, "gradcam", targets=targets, raw=True), expected, atol=1e-5, rtol=0)
    expected = captum_attr.GuidedBackprop(scores).attribute(inputs, target=targets)
    torch.testing.assert_close(explain(net, images, "guided_backprop", targets=targets, raw=True), expected, atol=1e-5, rtol=0)
    expected = captum_attr.GuidedGradCam(scores, layer).attribute(inputs, target=targets)  # nearest up-sampling
    got = explain(net, images, "guided_gradcam", targets=targets, raw=True, interpolation="nearest")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_counterfactual_is_gradcam_with_negated_gradients(images):
    net = tiny("cam")
    acts = {}
    handle = net.last_stage.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    net.eval()
    out = net(images)
    handle.remove()
    grad = torch.autograd.grad(out.logits[:, 0].sum(), acts["a"])[0]
    expected = torch.relu((-grad.mean(dim=(2, 3))[:, :, None, None] * acts["a"]).sum(1))
    torch.testing.assert_close(explain(net, images, "counterfactual", targets=0, raw=True), expected.detach())


def snapshot(net: nn.Module) -> dict:
    return {
        "modes": [m.training for m in net.modules()],
        "requires_grad": [p.requires_grad for p in net.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in net.parameters()],
        "hooks": sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in net.modules()),
        "buffers": [b.clone() for b in net.buffers()],
    }


@pytest.mark.parametrize("method", METHODS)
def test_the_model_is_left_as_it_was(method, images):
    net = tiny("abn")
    net.train()
    net.features.layer1.eval()  # a mixed state must survive too
    net.head.fc.weight.requires_grad_(False)
    net(images).logits.sum().backward()  # gradients the caller accumulated
    before = snapshot(net)
    explain(net, images, method)
    after = snapshot(net)
    assert after["modes"] == before["modes"] and after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"] == 0
    for old, new in zip(before["grads"], after["grads"]):
        assert (old is None and new is None) or torch.equal(old, new)
    for old, new in zip(before["buffers"], after["buffers"]):
        assert torch.equal(old, new)  # BatchNorm statistics untouched: the method ran in eval mode


def test_gradient_methods_stop_at_the_layer(images):
    net = tiny("cam")
    reached = []
    handle = net.features.conv1.register_full_backward_hook(lambda *args: reached.append(1))
    try:
        explain(net, images, "gradcam", layer="last_stage")
        explain(net, images, "gradcam++", layer="features.layer2")
    finally:
        handle.remove()
    assert reached == []
    assert all(p.grad is None for p in net.parameters())


def test_no_memory_growth_over_repeated_calls(images):
    net = tiny("abn")

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for obj in gc.get_objects() if torch.is_tensor(obj))

    for method in ("gradcam", "guided_gradcam", "relevance_cam", "abn"):
        explain(net, images, method)
        start = live_tensors()
        for _ in range(10):
            explain(net, images, method)
        assert live_tensors() <= start, method


def test_works_under_no_grad_and_inference_mode(images):
    net = tiny("cam")
    expected = explain(net, images, "gradcam")
    with torch.no_grad():
        torch.testing.assert_close(explain(net, images, "gradcam"), expected)
    with torch.inference_mode():
        torch.testing.assert_close(explain(net, images.clone(), "gradcam"), expected)


def test_lightning_module_is_explained_through_its_network(images):
    from abn.module import ABNModule

    module = ABNModule(arch="resnet20", head="abn", num_classes=5)
    torch.testing.assert_close(explain(module, images, "abn"), explain(module.net, images, "abn"))


@pytest.mark.parametrize("method", ["abn", "cam", "gradcam", "gradcam++", "counterfactual"])
def test_differentiable_maps_carry_gradients(method, images):
    net = tiny("abn").train()
    maps = explain(net, images, method, differentiable=True)
    assert maps.requires_grad
    maps.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert net.training  # differentiable mode runs the model as it is


def test_constant_maps_give_zeros_not_nan():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    maps = explain(net, torch.randn(2, 3, 8, 8), "gradcam", layer="0")
    assert torch.equal(maps, torch.zeros(2, 8, 8))
    constant = explain(net, torch.zeros(2, 3, 8, 8), "guided_backprop")
    assert not torch.isnan(constant).any()


def test_random_baseline_is_seeded(images):
    net = tiny("cam")
    torch.testing.assert_close(explain(net, images, "random", seed=3), explain(net, images, "random", seed=3))
    assert not torch.equal(explain(net, images, "random", seed=3), explain(net, images, "random", seed=4))


def test_bad_inputs_name_the_fix(images):
    cam_net, vgg = tiny("cam"), torchvision.models.vgg11(num_classes=5)
    with pytest.raises(ValueError, match="'abn' does not apply.*Methods that apply: cam, gradcam"):
        explain(cam_net, images, "abn")
    with pytest.raises(ValueError, match="'cam' does not apply.*GAP \\+ linear.*Methods that apply: gradcam"):
        explain(vgg, images, "cam")
    with pytest.raises(ValueError, match="unknown method 'gradcam\\+'.*gradcam\\+\\+"):
        explain(cam_net, images, "gradcam+")
    with pytest.raises(ValueError, match="no layer named 'layer9'.*features.layer1.*last_stage"):
        explain(cam_net, images, "gradcam", layer="layer9")
    with pytest.raises(ValueError, match="target class 5 is out of range.*5 classes"):
        explain(cam_net, images, "gradcam", targets=5)
    with pytest.raises(ValueError, match="target class -1"):
        explain(cam_net, images, "relevance_cam", targets=torch.tensor([0, -1, 2]))
    with pytest.raises(ValueError, match="one class index per image"):
        explain(cam_net, images, "cam", targets=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="CAM is defined only at.*'last_stage'"):
        explain(cam_net, images, "cam", layer="features.layer2")
    with pytest.raises(ValueError, match="not a B×C×h×w feature map"):
        explain(cam_net, images, "gradcam", layer="head")
    with pytest.raises(ValueError, match="takes no layer"):
        explain(cam_net, images, "guided_backprop", layer="last_stage")
    with pytest.raises(ValueError, match="differentiable=True applies to"):
        explain(cam_net, images, "guided_backprop", differentiable=True)
    with pytest.raises(ValueError, match="B×C×H×W"):
        explain(cam_net, images[0], "gradcam")


@pytest.mark.parametrize("arch", list_models())
def test_every_method_on_every_registered_model(arch):
    """One image through every method that applies, on every arch of abn.models (ABN head: the superset)."""
    torch.manual_seed(0)
    net = create_model(arch, head="abn", num_classes=3)
    size = 32 if model_info(arch).input_size == 32 else 64
    image = torch.randn(1, 3, size, size)
    for method in applicable_methods(net):
        maps = explain(net, image, method)
        assert maps.shape == (1, size, size) and torch.isfinite(maps).all(), method


@pytest.mark.parametrize("name, split", [("resnet18", "layer3"), ("efficientnet_b0", "features.5")])
def test_every_method_on_torchvision_abn_models(name, split):
    torch.manual_seed(0)
    net = create_model(f"torchvision:{name}", head="abn", num_classes=3, split=split)
    image = torch.randn(2, 3, 64, 64)
    for method in applicable_methods(net):
        maps = explain(net, image, method)
        assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all(), method
