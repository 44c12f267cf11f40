"""``abn-train init_from=<checkpoint>``: a new run (new folder, fresh optimizer and schedule, epoch 0) that starts
from the network weights of a checkpoint of the same model; clear refusals for anything else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import abn.train as train_cli
from abn.checkpoints import load_initial_weights
from abn.module import ABNModule
from abn.train import train

from .conftest import TINY_SHAPES, compose_train_config, record_instantiated, run_cli, train_once

# one epoch of two steps
SHORT = [*TINY_SHAPES, "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
         "+trainer.limit_test_batches=1", "logger=none"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """The run folder of a tiny abn-train run on the shapes, as the CLI leaves it."""
    folder = tmp_path_factory.mktemp("first")
    return train_once(folder, SHORT)


def runs_of(folder: Path) -> list[Path]:
    runs = folder / "logs" / "train" / "runs"
    return sorted(runs.iterdir()) if runs.is_dir() else []


def test_init_from_starts_a_new_run_from_the_checkpoints_weights(first_run, tmp_path, monkeypatch, capsys):
    last = first_run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    _, printed, _ = run_cli(train_cli.main, [*SHORT, f"init_from={last}"], tmp_path, monkeypatch, capsys)
    (run,) = runs_of(tmp_path)  # a new folder, not the first run's
    assert f"Starting a new run from the weights of {last}" in printed
    assert f"Starting a new run from the weights of {last}" in (run / "train.log").read_text()
    assert f"started from the weights of {last}" in printed
    assert OmegaConf.load(run / ".hydra" / "config.yaml").init_from == str(last)
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 0 and saved["global_step"] == 2  # one epoch of its own: the first run's epoch is not kept
    assert last.read_bytes() == before


def test_the_network_holds_the_checkpoints_weights_before_training(first_run, tmp_path, monkeypatch):
    last = first_run / "checkpoints" / "last.ckpt"
    built = record_instantiated(monkeypatch)
    cfg = compose_train_config(tmp_path, [*SHORT, f"init_from={last}", "train=false", "test=false"])
    train(cfg)
    model = next(thing for thing in built if isinstance(thing, ABNModule))
    expected = torch.load(last, weights_only=True)["state_dict"]
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in expected.items() if key.startswith("net."))
    fresh = ABNModule(arch="resnet20", head="abn", num_classes=8)
    assert not torch.equal(fresh.net.features.conv1.weight, loaded["net.features.conv1.weight"])


@pytest.mark.parametrize("override, named", [
    ("model.arch=resnet32", "arch: checkpoint 'resnet20' vs config 'resnet32'.*set model.arch=resnet20"),
    ("model.head=cam", "head: checkpoint 'abn' vs config 'cam'.*set model.head=abn"),
    ("data.num_classes=5", "num_classes: checkpoint 8 vs config 5.*use data with the checkpoint's 8 classes"),
])
def test_a_checkpoint_of_another_model_is_refused_naming_what_differs(first_run, tmp_path, monkeypatch, capsys,
                                                                     override, named):
    last = first_run / "checkpoints" / "last.ckpt"
    code, _, error = run_cli(train_cli.main, [*SHORT, f"init_from={last}", override], tmp_path, monkeypatch, capsys,
                             expect_success=False)
    assert code == 1 and "Traceback" not in error
    assert f"init_from={last} holds another model" in error
    assert re.search(named, error), error
    assert runs_of(tmp_path) == []  # the failed run leaves no folder


def test_missing_and_unreadable_files_are_refused(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nope.ckpt"
    code, _, error = run_cli(train_cli.main, [*SHORT, f"init_from={missing}"], tmp_path, monkeypatch, capsys,
                             expect_success=False)
    assert code == 1 and f"init_from={missing} does not exist" in error and "Traceback" not in error
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    code, _, error = run_cli(train_cli.main, [*SHORT, f"init_from={garbage}"], tmp_path, monkeypatch, capsys,
                             expect_success=False)
    assert code == 1 and f"init_from={garbage} is not a readable Lightning checkpoint" in error
    settings_only = tmp_path / "settings.ckpt"
    torch.save({"hyper_parameters": {"arch": "resnet20"}}, settings_only)
    with pytest.raises(ValueError, match="holds no abn model settings .* or no weights"):
        load_initial_weights(str(settings_only), ABNModule(arch="resnet20", head="abn", num_classes=8))
    assert garbage.read_bytes() == b"not a checkpoint"


def test_init_from_with_ckpt_path_is_refused_saying_which_does_what(first_run, tmp_path, monkeypatch, capsys):
    loose = tmp_path / "copied.ckpt"  # outside a run folder: a plain resume of ckpt_path in a new folder
    loose.write_bytes((first_run / "checkpoints" / "last.ckpt").read_bytes())
    code, _, error = run_cli(train_cli.main, [*SHORT, f"init_from={loose}", f"ckpt_path={loose}"], tmp_path,
                             monkeypatch, capsys, expect_success=False)
    assert code == 1 and "Traceback" not in error
    assert f"init_from={loose} starts a new run" in error and f"ckpt_path={loose} continues a run" in error
    assert "give only one of them" in error
    assert runs_of(tmp_path) == []


def test_a_run_started_with_init_from_resumes_and_cannot_change_its_start(first_run, tmp_path, monkeypatch, capsys):
    last = first_run / "checkpoints" / "last.ckpt"
    run_cli(train_cli.main, [*SHORT, f"init_from={last}"], tmp_path, monkeypatch, capsys)
    (run,) = runs_of(tmp_path)
    own = run / "checkpoints" / "last.ckpt"
    # continuing the fine-tune: its own init_from comes back with its settings, the checkpoint restores everything
    _, printed, _ = run_cli(train_cli.main, [f"ckpt_path={own}"], tmp_path, monkeypatch, capsys)
    assert f"Resuming the run in {run}" in printed and runs_of(tmp_path) == [run]
    assert "Starting a new run" not in printed
    code, _, error = run_cli(train_cli.main, [f"ckpt_path={own}", f"init_from={own}"], tmp_path, monkeypatch, capsys,
                             expect_success=False)
    assert code == 1 and f"that run started from {last}" in error and "give only one of them" in error


def test_classes_of_the_checkpoint_in_another_order_are_refused(first_run):
    last = str(first_run / "checkpoints" / "last.ckpt")
    model = ABNModule(arch="resnet20", head="abn", num_classes=8)
    classes = ["circle", "square", "triangle", "diamond", "plus", "ring", "cross", "frame"]
    load_initial_weights(last, model, classes)  # the same classes in the same order
    load_initial_weights(last, model, [f"{i}_{name}" for i, name in enumerate(classes)])  # other names: new data
    with pytest.raises(ValueError, match="each output would learn another class.*0_circle, 1_square"):
        load_initial_weights(last, model, sorted(classes))


def test_a_diverged_checkpoint_is_refused_as_a_start(first_run, tmp_path, monkeypatch, capsys):
    """Weights with an infinity would train nothing but nan: refused before a run folder is made."""
    saved = torch.load(first_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    first = next(key for key, value in saved["state_dict"].items() if value.is_floating_point())
    weights = saved["state_dict"][first].contiguous()  # weights saved in NHWC have no flat view
    weights.view(-1)[-1] = float("inf")
    saved["state_dict"][first] = weights
    diverged = tmp_path / "diverged.ckpt"
    torch.save(saved, diverged)
    code, _, error = run_cli(train_cli.main, [*SHORT, f"init_from={diverged}"], tmp_path, monkeypatch, capsys,
                             expect_success=False)
    assert code == 1 and "Traceback" not in error
    assert f"init_from={diverged} holds weights that are not finite" in error and f"the first {first}" in error
    assert "Start from an earlier checkpoint" in error and runs_of(tmp_path) == []
