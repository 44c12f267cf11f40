"""Every registered model keeps its parameters, state_dict layout and outputs across refactors.

``reference_models.json`` was recorded from the code before the single-builder refactor (issue 13) with

    python tests/models/test_unchanged.py --record

Each entry holds the parameter count, a digest of the state_dict keys and shapes (so checkpoints written before
still load), the outputs of a fresh model built after ``torch.manual_seed(0)`` (same initialisation), and the
outputs with every tensor of the state_dict filled from its own name (same computation, whatever the order in
which the layers were built).
"""

from __future__ import annotations

import hashlib
import json
import sys
import zlib
from pathlib import Path

import pytest
import torch

from abn.models import create_model, list_models, model_info

REFERENCE = Path(__file__).with_name("reference_models.json")
NUM_CLASSES = 5

# the heads that existed when the reference was recorded (the multitask head came after; its tests are
# tests/models/test_multitask.py)
RECORDED_HEADS = ("baseline", "cam", "abn")
# (label, arch, options): every registered arch with every recorded head, plus the builder options and torchvision
# models
CASES = [(f"{arch}:{head}", arch, {"head": head}) for arch in list_models() for head in RECORDED_HEADS]
CASES += [
    ("resnet20:abn:multiply", "resnet20", {"attention_mode": "multiply"}),
    ("resnet20:abn:kernel1", "resnet20", {"map_kernel_size": 1}),
    ("resnet20:abn:light", "resnet20", {"branch_depth": "light"}),
    ("resnet56:abn:depth2", "resnet56", {"branch_depth": 2}),
    ("resnet20:abn:gray", "resnet20", {"in_chans": 1}),
    ("resnet18:abn:light", "resnet18", {"branch_depth": "light"}),
    ("resnet50:abn:gray", "resnet50", {"in_chans": 1}),
    ("densenet_bc100:abn:light", "densenet_bc100", {"branch_depth": "light", "depth": 40}),
    ("wrn16_8:abn:light", "wrn16_8", {"branch_depth": "light", "widen_factor": 1}),
    ("resnext29_8x64d:abn:light", "resnext29_8x64d", {"branch_depth": "light", "base_channels": 8}),
    ("vgg16_bn_cifar:abn:light", "vgg16_bn_cifar", {"branch_depth": "light", "width": 16}),
    ("vgg16:abn:light", "vgg16", {"branch_depth": "light"}),
]
CASES += [
    (f"torchvision:{name}:{head}", f"torchvision:{name}", {"head": head, "split": split})
    for name, split in (("resnet18", "layer3"), ("vgg11", "features.15"), ("mobilenet_v2", "features.13"))
    for head in RECORDED_HEADS
]


def input_side(arch: str) -> int:
    if arch.startswith("torchvision:"):
        return 64
    return 32 if model_info(arch).input_size <= 64 else 64


def layout_digest(model: torch.nn.Module) -> str:
    lines = [f"{key}:{tuple(value.shape)}" for key, value in model.state_dict().items()]
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()


def fill_from_names(model: torch.nn.Module) -> None:
    """Every float tensor of the state_dict drawn from a generator seeded with its own key."""
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            draw = torch.randn(value.shape, generator=generator)
            if key.endswith("running_var"):
                draw = draw.abs() + 0.5
            # He-like scale for weights, small values for the rest, so that deep nets stay finite
            scale = (2.0 / (value[0].numel() or 1)) ** 0.5 if value.dim() > 1 else 0.1
            value.copy_(draw * scale)


def outputs(model: torch.nn.Module, in_chans: int, side: int) -> dict:
    x = torch.randn(2, in_chans, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.eval()(x)
    result = {"logits": out.logits.flatten().tolist()}
    if out.attention is not None:
        result["att_logits"] = out.att_logits.flatten().tolist()
        result["attention_mean"] = out.attention.mean().item()
        result["attention_shape"] = list(out.attention.shape)
    return result


def describe(arch: str, options: dict) -> dict:
    options = dict(options)
    in_chans = options.get("in_chans", 3)
    options.pop("in_chans", None)
    side = input_side(arch)
    torch.manual_seed(0)
    model = create_model(arch, num_classes=NUM_CLASSES, in_chans=in_chans, **options)
    entry = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "layout": layout_digest(model),
        "seeded": outputs(model, in_chans, side),
    }
    fill_from_names(model)
    entry["named"] = outputs(model, in_chans, side)
    return entry


def assert_close(actual, expected, where: str) -> None:
    for key, value in expected.items():
        got = actual.get(key)
        assert got is not None, f"{where}: {key} missing"
        assert torch.allclose(torch.tensor(got, dtype=torch.float64), torch.tensor(value, dtype=torch.float64), rtol=1e-4, atol=1e-5), (
            f"{where}: {key} changed"
        )


@pytest.mark.parametrize("label, arch, options", CASES, ids=[case[0] for case in CASES])
def test_parameters_layout_and_outputs_are_unchanged(label, arch, options):
    reference = json.loads(REFERENCE.read_text())[label]
    entry = describe(arch, options)
    assert entry["parameters"] == reference["parameters"]
    assert entry["layout"] == reference["layout"], "state_dict keys or shapes changed: old checkpoints would not load"
    assert_close(entry["named"], reference["named"], f"{label} with name-filled weights")
    assert_close(entry["seeded"], reference["seeded"], f"{label} built after torch.manual_seed(0)")


if __name__ == "__main__" and "--record" in sys.argv:
    torch.use_deterministic_algorithms(True)
    REFERENCE.write_text(json.dumps({label: describe(arch, options) for label, arch, options in CASES}, indent=1) + "\n")
    print(f"wrote {REFERENCE} ({len(CASES)} models)")
