"""Shared fixtures: Hydra configs composed in a temp dir, tiny Fashion-MNIST files in the real IDX format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sys
from typing import Callable

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from abn.config import config_dir
from abn.data.standins import write_idx

# A run small enough for a test: a few dozen shapes, one epoch, no worker processes.
TINY_SHAPES = ["data.train_size=64", "data.val_size=32", "data.test_size=32", "data.batch_size=16"]


def make_fashion_mnist(directory: Path, train: int = 120, test: int = 40, compress: bool = True) -> Path:
    """A tiny Fashion-MNIST with the original file names; label i has a bright square at a position of its own."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 40, (count, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 * label : 2 * label + 6, 4:10] = 250
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return directory


@pytest.fixture(scope="session", autouse=True)
def memory_format_cache(tmp_path_factory) -> Path:
    """The measured memory formats of abn-train runs (abn.speed) in a folder of the test session, not the home:
    every run of the session, in this process or another, trains in the same format."""
    folder = tmp_path_factory.mktemp("abn_cache")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("ABN_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def fashion_mnist_system_copy(tmp_path_factory) -> Path:
    """Stands in for /usr/share/datasets/fashion-mnist: the four gzipped files."""
    return make_fashion_mnist(tmp_path_factory.mktemp("debian") / "fashion-mnist")


@pytest.fixture
def clear_hydra():
    """Leave no global Hydra state behind (composed configs, HydraConfig) for the next test."""
    yield
    GlobalHydra.instance().clear()


def compose_train_config(output_dir: Path, overrides: list[str], config_name: str = "train") -> DictConfig:
    """The real ``train`` config (or ``explain``) with ``overrides``, Hydra's runtime filled in as the CLI would."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name=config_name, return_hydra_config=True, overrides=overrides)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.paths.root_dir = str(output_dir)  # as if started from there: ./data and ./logs inside the test's folder
    HydraConfig.instance().set_config(cfg)
    return cfg


def record_instantiated(monkeypatch) -> list:
    """The list, filled as ``abn.train`` runs, of everything it builds from the config (data module, model, ...)."""
    import abn.train

    built = []

    def recording_instantiate(*args, **kwargs):
        built.append(instantiate(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(abn.train, "instantiate", recording_instantiate)
    return built


def run_cli(entry: Callable[[], None], arguments: list[str], cwd: Path, monkeypatch, capsys,
            expect_success: bool = True) -> tuple[int, str, str]:
    """Run a console entry point (``abn.train.main``, ``abn.explain.run.main``) in this process as its script would
    run: Hydra parses ``arguments``, makes the run folder and reports errors. Returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["abn-cli", *arguments])
    GlobalHydra.instance().clear()
    try:
        entry()
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
    printed = capsys.readouterr()
    if expect_success:
        assert code == 0, f"{' '.join(arguments)} exited with {code}:\n{printed.out[-3000:]}\n{printed.err[-3000:]}"
    return code, printed.out, printed.err


def train_once(folder: Path, arguments: list[str]) -> Path:
    """Run ``abn-train arguments`` in ``folder`` as a user would (for module-scoped fixtures, which have no
    ``monkeypatch``); returns the run folder it made."""
    from abn.train import main

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(folder)
        monkeypatch.setattr(sys, "argv", ["abn-train", *arguments])
        GlobalHydra.instance().clear()
        try:
            main()
        finally:
            GlobalHydra.instance().clear()
    (run,) = (folder / "logs" / "train" / "runs").iterdir()
    return run
