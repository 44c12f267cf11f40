"""The CompCars experiment configs (the ABN paper's fine-grained car recognition): their recipe and learning-rate
schedule, one training and one test batch on a tiny CompCars in the real on-disk layout, and the paper's 224×323
input through each network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from abn.data.standins import write_standin_compcars
from abn.module import ABNModule
from abn.train import train

from .conftest import compose_train_config, record_instantiated

EXPERIMENTS = ("compcars_resnet101", "compcars_vgg16")
CARS = ((1, 3), (1, 7), (2, 12))  # three car models of two makes
# No ImageNet weights here (no network); a small image of about the paper's shape, one training batch and one test
# batch, no validation and no checkpoint (hundreds of MB for these networks) keep the big networks quick.
SMALL_RUN = ["model.pretrained=false", "data.image_size=[32,48]", "data.batch_size=2", "data.num_workers=0",
             "data.pin_memory=false", "trainer=cpu", "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
             "+trainer.limit_val_batches=0", "+trainer.limit_test_batches=1", "+trainer.enable_checkpointing=false",
             "callbacks=none", "logger=none"]


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def compcars_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "compcars"
    write_standin_compcars(root, cars=CARS)
    return root


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_has_the_papers_recipe(tmp_path: Path, name: str):
    cfg = compose_train_config(tmp_path, [f"experiment={name}"])
    assert cfg.task_name == name
    assert cfg.data._target_ == "abn.data.CompCarsDataModule" and cfg.data.classify == "model"
    assert cfg.data.batch_size == 32 and list(cfg.data.image_size) == [224, 323] and cfg.data.keep_aspect
    assert cfg.model.arch == name.removeprefix("compcars_") and cfg.model.head == "abn" and cfg.model.pretrained
    assert cfg.model.num_classes is None  # found in the split files: 431 car models or 75 makes
    optimizer = cfg.model.optimizer
    assert optimizer._target_ == "torch.optim.SGD" and optimizer.lr == 0.01 and optimizer.momentum == 0.9
    assert not optimizer.nesterov and optimizer.weight_decay == 1e-4
    assert cfg.model.scheduler._target_ == "torch.optim.lr_scheduler.MultiStepLR"
    assert list(cfg.model.scheduler.milestones) == [24, 34] and cfg.model.scheduler.gamma == 0.1
    assert cfg.model.scheduler_interval == "epoch" and cfg.trainer.max_epochs == 50

    other = compose_train_config(tmp_path, [f"experiment={name}", "data.classify=make", "model.head=baseline"])
    assert other.data.classify == "make" and other.model.head == "baseline" and other.model.optimizer.lr == 0.01


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_learning_rate_drops_tenfold_from_epochs_25_and_35(tmp_path: Path, name: str):
    """The paper's "×0.1 at 25 and 35 of 50", epochs counted from 1 as for ImageNet's "31 and 61"."""
    cfg = compose_train_config(tmp_path, [f"experiment={name}"])
    optimizer = instantiate(cfg.model.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
    scheduler = instantiate(cfg.model.scheduler)(optimizer)
    rate_of_epoch = {}
    for epoch in range(1, cfg.trainer.max_epochs + 1):
        rate_of_epoch[epoch] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()  # Lightning steps an epoch-interval scheduler after each training epoch
    expected = {1: 0.01, 24: 0.01, 25: 0.001, 34: 0.001, 35: 0.0001, 50: 0.0001}
    assert {epoch: rate_of_epoch[epoch] for epoch in expected} == pytest.approx(expected)


@pytest.mark.parametrize(
    ("name", "classify", "head"),
    # each network with both tasks and both heads (the task is data only, the head model only: no full product)
    [("compcars_resnet101", "model", "abn"), ("compcars_resnet101", "make", "baseline"),
     ("compcars_vgg16", "model", "baseline"), ("compcars_vgg16", "make", "abn")],
)
def test_experiment_trains_and_tests_on_compcars_files(tmp_path, monkeypatch, compcars_root, name, classify, head):
    overrides = [f"experiment={name}", f"data.root={compcars_root}", f"data.classify={classify}",
                 f"model.head={head}", *SMALL_RUN, f"paths.output_dir={tmp_path}"]
    cfg = compose_train_config(tmp_path, overrides)
    built = record_instantiated(monkeypatch)
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert ("test/acc_att" in metrics) == (head == "abn")
    model = next(obj for obj in built if isinstance(obj, ABNModule))
    assert model.hparams.arch == name.removeprefix("compcars_")
    assert model.hparams.num_classes == {"model": 3, "make": 2}[classify]  # counted in the split files


@pytest.mark.parametrize(("name", "map_size"), [("compcars_resnet101", (14, 21)), ("compcars_vgg16", (28, 40))])
def test_the_papers_image_size_goes_through_the_network(tmp_path, name, map_size):
    """224×323 is not the 224×224 these networks were made for: the classifiers still get a fixed-size input."""
    cfg = compose_train_config(tmp_path, [f"experiment={name}", "model.pretrained=false", "data.num_classes=431"])
    model = instantiate(cfg.model).eval()
    with torch.no_grad():
        output = model(torch.rand(1, 3, *cfg.data.image_size))
    assert output.logits.shape == (1, 431) and output.att_logits.shape == (1, 431)
    assert output.attention.shape == (1, 1, *map_size) and torch.isfinite(output.logits).all()
