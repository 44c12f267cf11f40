"""The data configs (conf/data/*.yaml): loader workers at most the cores this process may use."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class
from omegaconf import OmegaConf

import abn.config
from abn.checkpoints import training_data_config
from abn.config import available_cores, config_dir

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


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_the_class_count_is_the_data_modules_own(tmp_path: Path, name: str):
    """A config's num_classes is its module's default: the data set's constant (CIFAR-100's 100), or null where the
    files decide; a data set of a fixed count refuses another."""
    cfg = compose_train_config(tmp_path, [f"data={name}"])
    module_class = get_class(cfg.data._target_)
    assert cfg.data.num_classes == inspect.signature(module_class).parameters["num_classes"].default
    if module_class.fixed_num_classes is not None:
        assert cfg.data.num_classes == module_class.fixed_num_classes
        with pytest.raises(ValueError, match=f"has {module_class.fixed_num_classes} classes"):
            module_class(num_classes=module_class.fixed_num_classes + 1)


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
