"""torchvision:<name> with split=…: any torchvision CNN as baseline, CAM or ABN, and the bad split points."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from abn.models import HEADS, create_model

CNNS = [  # (torchvision name, split, expected feature channels at the split)
    ("resnet18", "layer3", 256),
    ("vgg11", "features.15", 512),
    ("densenet121", "features.denseblock3", 1024),
    ("convnext_tiny", "features.5", 384),
    ("efficientnet_b0", "features.5", 112),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name, split, channels", CNNS)
def test_wrapped_cnn_heads_shapes_and_map(name, split, channels, head):
    model = create_model(f"torchvision:{name}", head=head, num_classes=5, split=split).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        g = model.features(x)
    assert g.shape[1] == channels and out.logits.shape == (2, 5)
    if head == "abn":
        assert out.attention.shape == (2, 1, *g.shape[-2:]) and 0 <= out.attention.min() <= out.attention.max() <= 1
        assert out.att_logits.shape == (2, 5)
    elif head == "multitask":  # one raw map per attribute
        assert out.attention.shape == (2, 5, *g.shape[-2:]) and out.att_logits.shape == (2, 5)
    else:
        assert out.attention is None


def test_baseline_wrapping_computes_torchvisions_function():
    reference = torchvision.models.resnet18().eval()
    model = create_model("torchvision:resnet18", head="baseline", num_classes=1000, split="layer3").eval()
    # features.conv1.weight, last_stage.layer4.0.conv1.weight, head.fc.weight: torchvision's names behind a prefix
    model.load_state_dict({key: reference.state_dict()[key.split(".", 1)[1]] for key in model.state_dict()})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, reference(x))


def test_wrapped_state_dict_round_trips_and_gradients_reach_every_parameter():
    model = create_model("torchvision:resnet18", head="abn", num_classes=4, split="layer3")
    again = create_model("torchvision:resnet18", head="abn", num_classes=4, split="layer3")
    again.load_state_dict(model.state_dict(), strict=True)
    out = model(torch.randn(2, 3, 64, 64))
    (F.cross_entropy(out.logits, torch.tensor([0, 3])) + F.cross_entropy(out.att_logits, torch.tensor([0, 3]))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # the branch is a stride-1 copy, not the perception branch's modules
    assert model.attention_branch.stage.get_submodule("layer4.0.conv1") is not model.last_stage.get_submodule("layer4.0.conv1")
    assert model.attention_branch.stage.get_submodule("layer4.0.conv1").stride == (1, 1)


def test_pretrained_weights_reach_features_last_stage_and_branch(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    state = torchvision.models.resnet18().state_dict()
    for value in state.values():
        if value.is_floating_point():
            value.normal_()
    torch.save(state, tmp_path / "hub" / "checkpoints" / os.path.basename(torchvision.models.ResNet18_Weights.DEFAULT.url))
    model = create_model("torchvision:resnet18", head="abn", num_classes=3, split="layer3", pretrained=True)
    torch.testing.assert_close(model.features.get_submodule("layer2.0.conv1").weight, state["layer2.0.conv1.weight"])
    torch.testing.assert_close(model.last_stage.get_submodule("layer4.1.conv2").weight, state["layer4.1.conv2.weight"])
    torch.testing.assert_close(model.attention_branch.stage.get_submodule("layer4.1.conv2").weight, state["layer4.1.conv2.weight"])


@pytest.mark.parametrize(
    "split, problem",
    [
        (None, "give split=<module name>"),
        ("layer5", "split='layer5' names no module"),
        ("fc", "split='fc' does not output a spatial"),
        ("avgpool", "split='avgpool' is not followed by a spatial stage"),
        ("layer4", "split='layer4' is not followed by a spatial stage"),
        ("layer3.0.conv1", "split='layer3.0.conv1' is not a clean cut"),
    ],
)
def test_bad_split_points_list_the_valid_ones(split, problem):
    with pytest.raises(ValueError, match=f"{problem}.*valid split names: conv1, .*layer2, .*layer3"):
        create_model("torchvision:resnet18", head="abn", split=split)


def test_unknown_torchvision_model_and_light_branch_are_refused():
    with pytest.raises(ValueError, match="unknown torchvision model 'resnet19'; valid names: .*resnet18"):
        create_model("torchvision:resnet19", split="layer3")
    with pytest.raises(ValueError, match="branch_depth other than 'full' needs a registered arch"):
        create_model("torchvision:resnet18", split="layer3", branch_depth="light")


def test_grey_input():
    model = create_model("torchvision:efficientnet_b0", head="abn", num_classes=2, in_chans=1, split="features.5").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).logits.shape == (1, 2)
