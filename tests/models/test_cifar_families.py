"""DenseNet-BC, Wide ResNet and ResNeXt: the same networks as the official ABN code, and their options.

The parameter counts were measured by building the official models (models/cifar/{densenet,wrn,resnext}.py of
machine-perception-robotics-group/attention_branch_network) with the ABN paper's settings.
"""

from __future__ import annotations

import pytest
import torch

from abn.models import create_model

OFFICIAL_ABN_PARAMETERS = {
    # arch: {num_classes: parameters of the official ABN model}
    "resnet110_bottleneck": {10: 2_999_726, 100: 3_056_786},
    "densenet_bc100": {10: 1_049_958, 100: 1_122_498},
    "wrn28_10": {10: 64_349_486, 100: 64_475_666},
    "resnext29_8x64d": {10: 60_686_366, 100: 60_881_666},
}
OFFICIAL_MAP_SIZE = {"resnet110_bottleneck": 16, "densenet_bc100": 8, "wrn28_10": 16, "resnext29_8x64d": 16}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("arch", sorted(OFFICIAL_ABN_PARAMETERS))
def test_abn_has_the_official_parameter_count(arch, num_classes):
    model = create_model(arch, head="abn", num_classes=num_classes)
    assert count(model) == OFFICIAL_ABN_PARAMETERS[arch][num_classes]


@pytest.mark.parametrize("arch", sorted(OFFICIAL_MAP_SIZE))
def test_map_has_the_official_size(arch):
    model = create_model(arch, head="abn", num_classes=10).eval()
    with torch.no_grad():
        attention = model(torch.randn(1, 3, 32, 32)).attention
    assert attention.shape == (1, 1, OFFICIAL_MAP_SIZE[arch], OFFICIAL_MAP_SIZE[arch])


def test_baseline_sizes_are_the_published_ones():
    # DenseNet-BC-100 (k=12) has 0.8 M parameters, WRN-28-10 36.5 M, ResNeXt-29 8×64d 34.4 M
    assert 0.75e6 < count(create_model("densenet_bc100", head="baseline", num_classes=10)) < 0.8e6
    assert 36.4e6 < count(create_model("wrn28_10", head="baseline", num_classes=10)) < 36.6e6
    assert 34.3e6 < count(create_model("resnext29_8x64d", head="baseline", num_classes=10)) < 34.5e6


def test_wrn_dropout_is_0_3_and_can_be_changed():
    model = create_model("wrn28_10", head="abn", widen_factor=1)
    assert {block.dropout for block in model.last_stage.block3} == {0.3}
    model = create_model("wrn28_10", head="abn", widen_factor=1, dropout=0.0)
    assert {block.dropout for block in model.attention_branch.stage} == {0.0}


def test_light_densenet_branch_copies_one_dense_layer():
    model = create_model("densenet_bc100", head="abn", branch_depth="light")
    assert len(model.attention_branch.stage) == 1
    assert model.attention_branch.bn.num_features == model.features.trans2[2].out_channels + 12


@pytest.mark.parametrize(
    "arch, options, message",
    [
        ("densenet_bc100", {"depth": 50}, "DenseNet-BC depth must be 6n\\+4"),
        ("wrn28_10", {"depth": 27}, "Wide ResNet depth must be 6n\\+4"),
        ("wrn28_10", {"dropout": 1.0}, "dropout in \\[0, 1\\)"),
        ("resnext29_8x64d", {"depth": 30}, "ResNeXt depth must be 9n\\+2"),
        ("resnext29_8x64d", {"cardinality": 0}, "cardinality, widen_factor and base_channels must be positive"),
        ("densenet_bc100", {"branch_depth": 17}, "block count from 1 to 16"),
    ],
)
def test_bad_family_options_are_named(arch, options, message):
    with pytest.raises(ValueError, match=message):
        create_model(arch, head="abn", **options)
