"""What the data decides for the model (class count, task, default arch) is handed to it; the config is only read."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from abn.data.celeba import ATTRIBUTE_NAMES
from abn.data.facts import DataFacts, adopt_data_facts
from abn.data.standins import write_standin_celeba

from ..conftest import compose_train_config


def test_the_default_arch_and_class_count_go_to_the_model_not_into_the_config(tmp_path: Path, caplog):
    cfg = compose_train_config(tmp_path, [])  # the shapes, model.arch: null
    GlobalHydra.instance().clear()
    written = OmegaConf.to_container(cfg, resolve=False)
    with caplog.at_level(logging.INFO, logger="abn"):
        facts = adopt_data_facts(cfg, instantiate(cfg.data))
    assert facts == DataFacts(num_classes=8, task="multiclass", arch="resnet20")
    assert "model.arch=resnet20: the usual network for this data's 32-px images" in caplog.text
    assert OmegaConf.to_container(cfg, resolve=False) == written
    model = instantiate(cfg.model, **facts.model_arguments())
    assert model.hparams.arch == "resnet20" and model.hparams.num_classes == 8


def test_the_class_count_found_in_the_files_and_the_task_fill_the_settings_shown(tmp_path: Path, caplog):
    write_standin_celeba(tmp_path)
    cfg = compose_train_config(tmp_path, ["data=celeba", f"data.root={tmp_path}", "model.arch=resnet20"])
    GlobalHydra.instance().clear()
    with caplog.at_level(logging.WARNING, logger="abn"):
        facts = adopt_data_facts(cfg, instantiate(cfg.data))
    # the configured arch is kept, and the attribute names go to the model (it logs each attribute's accuracy) ...
    assert facts == DataFacts(num_classes=40, task="multilabel", arch=None, attribute_names=ATTRIBUTE_NAMES)
    assert "model.arch=resnet20 is a network for 32-px" in caplog.text  # ... with a note on the image size
    assert cfg.data.num_classes is None and cfg.model.num_classes is None
    settings = OmegaConf.to_container(cfg, resolve=True)
    settled = facts.settle({"data": settings["data"], "model": settings["model"]})
    assert settled["data"]["num_classes"] == settled["model"]["num_classes"] == 40
    assert settled["data"]["task"] == settled["model"]["task"] == "multilabel"
    assert settled["model"]["arch"] == "resnet20" and settled["data"]["root"] == str(tmp_path)


def test_explaining_needs_no_model_section(tmp_path: Path):
    cfg = OmegaConf.create({"data": {"num_classes": 5}})
    facts = adopt_data_facts(cfg, instantiate({"_target_": "abn.data.ShapesDataModule", "num_classes": 5}))
    assert facts == DataFacts(num_classes=5, task="multiclass")
