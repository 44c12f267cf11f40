"""ImageNet ResNets and VGGs (torchvision's classes): official sizes, map sizes, the VGG heads, pretrained weights.

The ResNet parameter counts were measured by building the official ABN models (models/imagenet/resnet.py of
machine-perception-robotics-group/attention_branch_network) with 1000 classes.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision

from abn.explain import explain
from abn.models import create_model

OFFICIAL_ABN_PARAMETERS = {
    "resnet18": 21_607_266,
    "resnet34": 36_436_066,
    "resnet50": 43_584_866,
    "resnet101": 62_576_994,
    "resnet152": 78_220_642,
}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", sorted(OFFICIAL_ABN_PARAMETERS))
def test_resnet_abn_has_the_official_parameter_count(arch):
    assert count(create_model(arch, head="abn", num_classes=1000)) == OFFICIAL_ABN_PARAMETERS[arch]


def test_resnet_baseline_is_torchvisions_network():
    model = create_model("resnet50", head="baseline", num_classes=1000)
    assert count(model) == count(torchvision.models.resnet50())


def test_resnet_map_is_14x14_at_224():
    model = create_model("resnet18", head="abn", num_classes=1000).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).attention.shape == (1, 1, 14, 14)
    # the branch's copy of layer4 runs at stride 1
    assert all(m.stride == (1, 1) for m in model.attention_branch.stage.modules() if isinstance(m, torch.nn.Conv2d))


def test_vgg_split_maps_and_heads():
    abn = create_model("vgg16_bn_cifar", head="abn", num_classes=10).eval()
    with torch.no_grad():
        assert abn(torch.randn(1, 3, 32, 32)).attention.shape == (1, 1, 4, 4)  # conv4_3's resolution
    convs = [m for m in abn.attention_branch.stage if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 and not any(isinstance(m, torch.nn.MaxPool2d) for m in abn.attention_branch.stage)
    light = create_model("vgg16_bn_cifar", head="abn", branch_depth="light")
    assert sum(isinstance(m, torch.nn.Conv2d) for m in light.attention_branch.stage) == 1
    imagenet = create_model("vgg16", head="abn", num_classes=3).eval()
    with torch.no_grad():
        assert imagenet(torch.randn(1, 3, 64, 64)).attention.shape == (1, 1, 8, 8)  # 28×28 at 224
    # the perception branch keeps VGG's fully connected classifier
    assert isinstance(imagenet.head.classifier[-1], torch.nn.Linear) and imagenet.head.classifier[-1].out_features == 3


def test_vgg_cam_head_is_vgg_gap():
    model = create_model("vgg16", head="cam", num_classes=4).eval()
    assert model.last_stage.cam_conv[0].out_channels == 1024 and not hasattr(model.last_stage, "pool5")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x).logits
    cam = explain(model, x, "cam", targets=torch.tensor([1, 2]), raw=True)
    assert cam.shape == (2, 4, 4)
    torch.testing.assert_close(cam.mean(dim=(1, 2)), logits[torch.arange(2), torch.tensor([1, 2])])


@pytest.mark.parametrize("arch", ["resnet18", "vgg16_bn"])
def test_one_input_channel(arch):
    model = create_model(arch, head="abn", num_classes=3, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).logits.shape == (2, 3)


@pytest.fixture
def fake_resnet18_weights(tmp_path: Path, monkeypatch) -> dict:
    """A random resnet18 state dict where torchvision looks for the downloaded ImageNet weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(123)
    state = torchvision.models.resnet18().state_dict()
    for key, value in state.items():  # make every tensor recognisable, BatchNorm statistics included
        if value.is_floating_point():
            value.normal_()
    torch.save(state, checkpoints / os.path.basename(url))
    return state


@pytest.mark.parametrize("num_classes", [1000, 10])
def test_pretrained_weights_fill_the_shared_parts_and_the_branch_copy(fake_resnet18_weights, num_classes):
    model = create_model("resnet18", head="abn", num_classes=num_classes, pretrained=True)
    state = fake_resnet18_weights
    torch.testing.assert_close(model.features.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(model.features.layer3[1].bn2.running_var, state["layer3.1.bn2.running_var"])
    for name, value in state.items():
        if name.startswith("layer4."):
            torch.testing.assert_close(model.last_stage.state_dict()[name[len("layer4.") :]], value)
            torch.testing.assert_close(model.attention_branch.stage.state_dict()[name[len("layer4.") :]], value)
    if num_classes == 1000:
        torch.testing.assert_close(model.head.fc.weight, state["fc.weight"])
    else:
        assert model.head.fc.weight.shape == (10, 512)


def test_pretrained_weights_that_cannot_be_downloaded_say_where_to_put_them(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    expected = str(tmp_path / "hub" / "checkpoints" / os.path.basename(url))
    with pytest.raises(FileNotFoundError, match="Download " + url.replace(".", r"\.") + ".*" + expected.replace(".", r"\.")):
        create_model("resnet18", pretrained=True)
