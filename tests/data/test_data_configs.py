"""The data configs (conf/data/*.yaml): loader workers at most the cores this process may use."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import abn.config
from abn.config import available_cores, config_dir
from abn.explain.run import training_data_config

from ..conftest import compose_train_config

DATA_CONFIGS = sorted(path.stem for path in (config_dir() / "data").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_loader_workers_are_at_most_the_available_cores(tmp_path: Path, name: str):
    cfg = compose_train_config(tmp_path, [f"data={name}"])
    assert 0 <= cfg.data.num_workers <= available_cores()


def test_the_configured_workers_are_kept_below_the_core_count(tmp_path: Path, monkeypatch):
    cfg = compose_train_config(tmp_path, ["data=imagenet"])
    assert OmegaConf.to_container(cfg.data, resolve=False)["num_workers"] == "${abn.workers:8}"
    monkeypatch.setattr(abn.config, "available_cores", lambda: 64)
    assert cfg.data.num_workers == 8
    monkeypatch.setattr(abn.config, "available_cores", lambda: 3)
    assert cfg.data.num_workers == 3


def test_a_saved_training_config_resolves_its_workers(tmp_path: Path, monkeypatch):
    """abn-explain reads the data section of a run's .hydra/config.yaml, saved with the interpolation as written."""
    cfg = compose_train_config(tmp_path, ["data=compcars"])
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save({key: cfg[key] for key in cfg if key != "hydra"}, tmp_path / ".hydra" / "config.yaml")
    data = training_data_config(str(tmp_path / "checkpoints" / "last.ckpt"))
    monkeypatch.setattr(abn.config, "available_cores", lambda: 2)
    assert data.num_workers == 2
