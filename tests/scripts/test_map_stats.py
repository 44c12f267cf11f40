"""scripts/map_stats.py: how M is spread on a run's test images, read as abn-explain reads model and data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from abn.checkpoints import load_network
from tests.conftest import train_once
from tests.scripts.conftest import load_script

TINY = ["data=shapes", "data.train_size=16", "data.val_size=8", "data.test_size=24", "data.batch_size=8",
        "data.num_workers=0", "trainer.max_epochs=1", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1", "logger=none"]


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_a_saturated_map_and_a_map_that_picks_a_region():
    script = load_script("map_stats")
    assert cells(script.stats_row("all ones", torch.ones(2, 4, 4)))[1:] == ["2", "1.000", "1.000", "0.000", "0.000"]
    region = torch.zeros(3, 4, 4)
    region[:, :2] = 1.0  # half of every map at 1, half at 0
    assert cells(script.stats_row("half", region))[1:] == ["3", "0.500", "0.500", "0.500", "0.516"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return {head: train_once(tmp_path_factory.mktemp(head), [*TINY, f"model.head={head}"]) for head in ("abn", "baseline")}


def test_the_figures_are_those_of_the_runs_own_test_images(runs):
    script = load_script("map_stats")
    table = script.main([str(runs["abn"]), "--images", "16", "--batch-size", "8", "--device", "cpu"])
    header, _, row = table.splitlines()
    assert cells(header)[:3] == ["run", "maps", "M mean"] and cells(row)[:2] == [str(runs["abn"]), "16"]

    net = load_network(str(runs["abn"] / "checkpoints" / "last.ckpt"), torch.device("cpu"))
    data = instantiate(OmegaConf.load(runs["abn"] / ".hydra" / "config.yaml").data)
    data.setup("test")
    images = torch.cat([batch[0] for batch, _ in zip(data.test_dataloader(), range(2))])
    with torch.no_grad():
        maps = net(images).attention[:, 0]
    assert len(images) == 16 and cells(row)[2] == f"{maps.mean():.3f}"
    assert cells(row)[5] == f"{maps.flatten(1).std(1).mean():.3f}"


def test_a_run_without_attention_map_or_checkpoint_is_named(runs, tmp_path):
    script = load_script("map_stats")
    with pytest.raises(SystemExit, match="has no attention map M .*give an ABN run"):
        script.main([str(runs["baseline"]), "--images", "8", "--batch-size", "8", "--device", "cpu"])
    with pytest.raises(SystemExit, match=f"{tmp_path}: no checkpoint there"):
        script.main([str(tmp_path)])
