"""Every paper-setting experiment config composes with its recipe, and runs end to end on stand-in data."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from abn.config import config_dir
from abn.models import list_models
from abn.train import train

from .conftest import compose_train_config

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
PAPER_SETTINGS = [
    f"{data}_{arch}"
    for data in ("cifar10", "cifar100", "svhn")
    for arch in ("resnet110", "densenet_bc100", "wrn28_10", "resnext29_8x64d")
] + [f"imagenet_{arch}" for arch in ("resnet50", "resnet101", "resnet152", "vgg16")]


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def test_every_paper_setting_has_an_experiment():
    assert set(PAPER_SETTINGS) <= set(EXPERIMENTS), sorted(set(PAPER_SETTINGS) - set(EXPERIMENTS))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_with_its_recipe(tmp_path: Path, name: str):
    cfg = compose_train_config(tmp_path, [f"experiment={name}"])
    assert cfg.model.arch in list_models()
    dataset = name.split("_")[0]
    if dataset in ("cifar10", "cifar100", "svhn"):
        assert cfg.data._target_.lower().endswith(f"{dataset}datamodule")
        assert cfg.data.batch_size == 128 and cfg.model.optimizer.lr == 0.1 and cfg.model.optimizer.momentum == 0.9
        wide = "wrn" in name or "resnext" in name
        assert cfg.model.optimizer.weight_decay == (5e-4 if wide else 1e-4)
        epochs = 40 if dataset == "svhn" else 300
        assert cfg.trainer.max_epochs == epochs
        assert list(cfg.model.scheduler.milestones) == [epochs // 2, epochs * 3 // 4]
        assert cfg.model.num_classes == (100 if dataset == "cifar100" else 10)
    elif dataset == "imagenet":
        assert cfg.data.batch_size == 256 and cfg.trainer.max_epochs == 90
        assert list(cfg.model.scheduler.milestones) == [30, 60]
        assert cfg.model.num_classes == 1000 and cfg.model.top5


@pytest.mark.parametrize("head", ["baseline", "abn"])
def test_one_override_switches_the_head(tmp_path: Path, head: str):
    cfg = compose_train_config(tmp_path, ["experiment=cifar100_resnet110", f"model.head={head}"])
    model = instantiate(cfg.model)
    assert model.net.head_name == head
    assert (model.net.attention_branch is not None) == (head == "abn")


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n in PAPER_SETTINGS])
def test_experiment_runs_fast_dev_run_on_stand_in_data(tmp_path: Path, name: str):
    """Until the data set is on disk, the recipe runs on the embedded shapes (tiny batches: some models are big)."""
    cfg = compose_train_config(
        tmp_path,
        [
            f"experiment={name}",
            "data=shapes",
            "data.batch_size=2",
            "data.train_size=4",
            "data.val_size=2",
            "data.test_size=2",
            "trainer=cpu",
            "trainer.fast_dev_run=true",
            "logger=none",
            "callbacks=none",
        ],
    )
    metrics = train(cfg)
    assert "test/acc" in metrics
