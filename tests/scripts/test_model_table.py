"""scripts/model_table.py: the README's model table comes from real counts."""

from __future__ import annotations

import pytest

from abn.models import create_model

from .conftest import load_script

model_table = load_script("model_table")


def test_counts_are_the_networks_own():
    params, macs, map_size = model_table.measure("resnet20", "abn")
    assert params == sum(p.numel() for p in create_model("resnet20", head="abn").parameters())
    assert map_size == (16, 16)
    # ResNet-20 is known to cost 41 M multiply-accumulates per 32×32 image (He et al. 2016: 0.27 M parameters)
    base_params, base_macs, base_map = model_table.measure("resnet20", "baseline")
    assert base_map is None and base_params == 272_474 and 40e6 < base_macs < 42e6
    assert macs > 2 * base_macs  # the branch runs the last stage at twice the resolution: 4× its MACs


def test_table_rows_and_readme_update(tmp_path, monkeypatch):
    markdown = model_table.table(["resnet20"])
    row = markdown.splitlines()[-1]
    assert row.startswith("| resnet20 | 32×32 | 16×16 | 0.27 M |") and "+76 %" in row
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{model_table.START}\nold table\n{model_table.END}\nrest\n")
    monkeypatch.setattr(model_table, "README", readme)
    model_table.update_readme(markdown)
    text = readme.read_text()
    assert "old table" not in text and row in text and text.startswith("intro\n") and text.endswith("rest\n")
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="lacks the markers"):
        model_table.update_readme(markdown)


def test_order_is_by_family_then_depth():
    archs = ["resnet110", "vgg16", "resnet20", "resnet18", "densenet_bc100"]
    assert sorted(archs, key=model_table.table_order) == ["densenet_bc100", "resnet20", "resnet110", "resnet18", "vgg16"]


@pytest.mark.parametrize("arch", ["resnet20", "densenet_bc100", "vgg16_bn_cifar"])
def test_readme_table_is_the_scripts_output(arch):
    """The README's rows are what the script prints now (rerun `scripts/model_table.py --update-readme`)."""
    row = model_table.table([arch]).splitlines()[-1]
    assert row in model_table.README.read_text()
