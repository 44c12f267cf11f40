"""The multi-task experiment on the embedded multi-attribute shapes: it chooses the variant that learns from scratch,
and its documented commands (multi-task ABN, baseline, abn-explain on the result) run end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from abn.explain.run import run_explain
from abn.train import train

from .conftest import compose_train_config

EXPERIMENT = "experiment=multishapes_multitask"
TINY = ["data.train_size=16", "data.val_size=8", "data.test_size=8", "data.batch_size=8", "trainer.max_epochs=1",
        "logger=none"]


pytestmark = pytest.mark.usefixtures("clear_hydra")


def test_the_experiment_is_the_variant_that_learns_from_scratch(tmp_path: Path):
    cfg = compose_train_config(tmp_path, [EXPERIMENT])
    assert cfg.data._target_.endswith("MultiShapesDataModule") and cfg.model.arch == "resnet20"
    assert (cfg.model.head, cfg.model.map_pooling, cfg.model.map_activation, cfg.model.attention_mode) == (
        "multitask", "avg", "sigmoid", "residual")
    assert not cfg.model.pretrained and cfg.trainer.max_epochs == 3


@pytest.mark.parametrize("head", ["multitask", "baseline"])
def test_trains_and_explains_per_attribute(tmp_path: Path, head: str):
    run = tmp_path / "run"
    cfg = compose_train_config(run, [EXPERIMENT, f"model.head={head}", *TINY])
    (run / ".hydra").mkdir(parents=True)  # as abn-train saves it, for abn-explain to read the data settings
    OmegaConf.save({key: cfg[key] for key in cfg if key != "hydra"}, run / ".hydra" / "config.yaml")
    metrics = train(cfg)
    assert sorted(name for name in metrics if name.startswith("test_attributes/")) == [
        f"test_attributes/{name}" for name in sorted(["circle", "square", "triangle", "diamond", "plus"])]
    GlobalHydra.instance().clear()
    explain_cfg = compose_train_config(tmp_path / "explain", [
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "num_batches=1", "batch_size=4",
        "methods=[gradcam]" if head == "baseline" else "methods=[gradcam,abn]",
        "metrics.deletion_steps=2", "grid_batches=0", "tensorboard=false"], config_name="explain")
    rows = run_explain(explain_cfg)["rows"]
    methods = ["gradcam"] if head == "baseline" else ["gradcam", "abn"]  # abn: the multi-task map of each attribute
    assert [row["method"] for row in rows if row["attribute"] == "mean"] == methods
    assert {row["attribute"] for row in rows} == {"circle", "square", "triangle", "diamond", "plus", "mean"}
