"""abn.checkpoints: a run written before the issue-13 refactor still loads, explains and passes the resume check;
the errors for checkpoints that cannot."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import abn.explain.run as explain_cli
import abn.train as train_cli
from abn.checkpoints import (check_resume_checkpoint, check_run_data, load_network, read_checkpoint,
                             training_data_config)
from abn.config import config_dir
from abn.explain import METHODS
from abn.module import ABNModule
from abn.train import train

from .conftest import TINY_SHAPES, compose_train_config, run_cli, train_once

FIXTURE = Path(__file__).parent / "fixtures" / "run_before_issue13"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A copy of the fixture's run folder (resnet20 ABN on the embedded shapes, 8 classes), so nothing writes into
    the repository."""
    run = tmp_path / "old_run"
    shutil.copytree(FIXTURE, run)
    return run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real run folder of a tiny abn-train run on the embedded shapes (2 steps), trained once for this module."""
    folder = tmp_path_factory.mktemp("trained")
    arguments = [*TINY_SHAPES, "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
                 "+trainer.limit_test_batches=1", "logger=none"]
    return train_once(folder, arguments)


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """A copy of :func:`trained_run` for this test to change."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


EXPLAIN_QUICKLY = ["num_batches=1", "batch_size=8", "metrics.deletion_steps=2", "tensorboard=false"]


def test_an_old_checkpoint_loads_as_the_network_it_was(old_run):
    net = load_network(str(old_run / "checkpoints" / "last.ckpt"), torch.device("cpu"))
    saved = torch.load(old_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (net.head_name, net.num_classes, net.in_chans) == ("abn", 8, 3)
    assert not net.training
    weights = {f"net.{key}": value for key, value in net.state_dict().items()}
    assert weights.keys() == saved["state_dict"].keys()
    for key, value in weights.items():
        assert torch.equal(value, saved["state_dict"][key]), key
    assert training_data_config(str(old_run / "checkpoints" / "last.ckpt")).num_classes == 8


def test_abn_explain_explains_an_old_checkpoint(old_run, tmp_path, monkeypatch, capsys):
    checkpoint = old_run / "checkpoints" / "last.ckpt"
    run_cli(explain_cli.main, [f"ckpt_path={checkpoint}", "num_batches=1", "batch_size=8", "metrics.deletion_steps=2"],
            tmp_path, monkeypatch, capsys)
    (table,) = tmp_path.glob("logs/explain/runs/*/metrics.csv")
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == list(METHODS)  # an ABN: every method applies
    assert all(0.0 <= float(row["deletion_auc"]) <= 1.0 for row in rows)
    assert "test split, 8 images" in (table.parent / "metrics.md").read_text()


def test_an_old_checkpoint_passes_the_resume_check(old_run, tmp_path):
    """The model abn-train builds today from the run's own settings is the model the checkpoint holds."""
    checkpoint = old_run / "checkpoints" / "last.ckpt"
    overrides = [str(o) for o in OmegaConf.load(old_run / ".hydra" / "overrides.yaml")]
    cfg = compose_train_config(tmp_path, [*overrides, f"ckpt_path={checkpoint}", "train=false", "test=false",
                                          "logger=none", "callbacks=none"])
    GlobalHydra.instance().clear()
    assert "test/acc" not in train(cfg)  # check_resume_checkpoint ran and raised nothing; no fit, no test
    check_resume_checkpoint(str(checkpoint), ABNModule(arch="resnet20", head="abn", num_classes=8), training=False)
    with pytest.raises(ValueError, match="another model .*num_classes: checkpoint 8 vs config 5"):
        check_resume_checkpoint(str(checkpoint), ABNModule(arch="resnet20", head="abn", num_classes=5),
                                training=False)


def test_training_cannot_continue_from_weights_only(old_run, tmp_path, monkeypatch, capsys):
    """The fixture holds no optimizer state (see tests/fixtures/README.md): abn-train names that instead of
    Lightning's KeyError traceback; the checkpoint is untouched and the run's earlier settings are kept."""
    checkpoint = (old_run / "checkpoints" / "last.ckpt").read_bytes()
    settings = {path.name: path.read_bytes() for path in (old_run / ".hydra").iterdir()}
    code, out, err = run_cli(train_cli.main, ["ckpt_path=checkpoints/last.ckpt"], old_run, monkeypatch, capsys,
                             expect_success=False)
    assert code != 0 and "holds the weights only" in out + err and "Traceback" not in out + err
    assert (old_run / "checkpoints" / "last.ckpt").read_bytes() == checkpoint
    (kept,) = (old_run / ".hydra" / "previous").iterdir()
    assert {path.name: path.read_bytes() for path in kept.iterdir()} == settings


def test_unreadable_and_missing_checkpoints_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt does not exist; give the path"):
        check_resume_checkpoint(str(tmp_path / "missing.ckpt"), ABNModule(arch="resnet20", head="abn", num_classes=8))
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable Lightning checkpoint"):
        read_checkpoint(str(garbage), "give another")
    listed = tmp_path / "list.ckpt"
    torch.save([1, 2], listed)
    with pytest.raises(ValueError, match="not a readable Lightning checkpoint \\(it holds a list\\)"):
        load_network(str(listed), torch.device("cpu"))


@pytest.mark.parametrize("key, crafted", [
    ("made", lambda marker: {"_target_": "os.mkdir", "path": str(marker)}),  # Hydra calls it before the data module
    ("made", lambda marker: f"${{oc.create:{{_target_: os.mkdir, path: '{marker}'}}}}"),  # a resolver building one
    ("_target_", lambda marker: "os.mkdir"),
    ("_partial_", lambda marker: True),
], ids=["nested_target", "oc_create", "target", "partial"])
def test_a_run_folder_s_data_settings_may_not_choose_what_gets_called(run, tmp_path, monkeypatch, capsys, key, crafted):
    """abn-explain builds the data from the run's .hydra/config.yaml: a crafted _target_ there is refused, not called,
    and the message names the file, the key and the way out (data=<name>)."""
    marker = tmp_path / "called"
    saved = run / ".hydra" / "config.yaml"
    config = OmegaConf.load(saved)
    config.data[key] = crafted(marker)
    OmegaConf.save(config, saved)
    code, _, error = run_cli(explain_cli.main, [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", *EXPLAIN_QUICKLY],
                             tmp_path, monkeypatch, capsys, expect_success=False)
    assert code == 1 and f"{saved} sets data.{key}" in error and "Choose the data with data=<name>" in error
    assert "Traceback" not in error and not marker.exists()
    assert not list(tmp_path.glob("logs/explain/runs/*/metrics.csv"))


@pytest.mark.parametrize("name", sorted(path.stem for path in (config_dir() / "data").glob("*.yaml")))
def test_the_data_settings_of_every_data_set_are_taken_from_a_run_folder(name, tmp_path):
    """What conf/data/<name>.yaml saves into a run's config passes the check (its _target_ is a data module)."""
    data = OmegaConf.to_container(OmegaConf.load(config_dir() / "data" / f"{name}.yaml"), resolve=False)
    check_run_data(tmp_path / "config.yaml", data)


def test_abn_explain_refuses_a_diverged_checkpoint(run, tmp_path, monkeypatch, capsys):
    """Weights with a NaN would give maps and a table of zeros: refused, naming the tensor and what to do instead."""
    checkpoint = run / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    first = next(key for key, value in saved["state_dict"].items() if value.is_floating_point())
    weights = saved["state_dict"][first].contiguous()  # weights saved in NHWC have no flat view
    weights.view(-1)[0] = float("nan")
    saved["state_dict"][first] = weights
    torch.save(saved, checkpoint)
    others = sorted(path.name for path in checkpoint.parent.glob("*.ckpt") if path != checkpoint)
    with pytest.raises(ValueError, match=f"not finite \\(NaN or infinity in 1 of {len(saved['state_dict'])} tensors, "
                                         f"the first {first}\\): the training that wrote it diverged"):
        load_network(str(checkpoint), torch.device("cpu"))
    code, _, error = run_cli(explain_cli.main, [f"ckpt_path={checkpoint}", *EXPLAIN_QUICKLY], tmp_path, monkeypatch,
                             capsys, expect_success=False)
    assert code == 1 and "diverged" in error and "lower learning rate (model.optimizer.lr)" in error
    assert all(name in error for name in others) and "Traceback" not in error
    assert not list(tmp_path.glob("logs/explain/runs/*/metrics.csv"))
