"""scripts/model_table.py: the model table of docs/models.md comes from real counts."""

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


def test_table_rows_and_page_update(tmp_path, monkeypatch):
    markdown = model_table.table(["resnet20"])
    row = markdown.splitlines()[-1]
    assert row.startswith("| resnet20 | 32×32 | 16×16 | 0.27 M |") and "+76 %" in row
    page = tmp_path / "models.md"
    page.write_text(f"intro\n{model_table.START}\nold table\n{model_table.END}\nrest\n")
    monkeypatch.setattr(model_table, "PAGE", page)
    model_table.update_page(markdown)
    text = page.read_text()
    assert "old table" not in text and row in text and text.startswith("intro\n") and text.endswith("rest\n")
    page.write_text("no markers")
    with pytest.raises(SystemExit, match="lacks the markers"):
        model_table.update_page(markdown)


def test_the_table_is_written_into_the_models_page():
    assert model_table.PAGE.parts[-2:] == ("docs", "models.md")
    text = model_table.PAGE.read_text()
    assert model_table.START in text and model_table.END in text


def test_order_is_by_family_then_depth():
    archs = ["resnet110", "vgg16", "resnet20", "resnet18", "densenet_bc100"]
    assert sorted(archs, key=model_table.table_order) == ["densenet_bc100", "resnet20", "resnet110", "resnet18", "vgg16"]


@pytest.mark.parametrize("arch", ["resnet20", "densenet_bc100", "vgg16_bn_cifar"])
def test_docs_table_is_the_scripts_output(arch):
    """The rows of docs/models.md are what the script prints now (rerun `scripts/model_table.py --update-docs`)."""
    row = model_table.table([arch]).splitlines()[-1]
    assert row in model_table.PAGE.read_text()
