"""The CelebA multi-task experiment: the authors' recipe composes, and the multi-task ABN, the single-map ABN and
the baseline train one batch on a CelebA-format stand-in, logging every attribute's accuracy by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from abn.data.celeba import ATTRIBUTE_NAMES
from abn.data.standins import write_standin_celeba
from abn.train import train

from .conftest import compose_train_config

EXPERIMENT = "experiment=celeba_resnet101_multitask"


pytestmark = pytest.mark.usefixtures("clear_hydra")


def test_the_recipe_is_the_authors(tmp_path: Path):
    cfg = compose_train_config(tmp_path, [EXPERIMENT])
    assert cfg.model.arch == "resnet101" and cfg.model.head == "multitask" and cfg.model.pretrained
    assert cfg.model.attention_mode is None and cfg.model.map_pooling == "max" and cfg.model.task_head == "two_way"
    assert cfg.model.map_activation == "none"
    optimizer = cfg.model.optimizer
    assert (optimizer.lr, optimizer.momentum, optimizer.weight_decay, optimizer.nesterov) == (0.01, 0.9, 1e-4, False)
    assert list(cfg.model.scheduler.milestones) == [4, 8] and cfg.model.scheduler.gamma == 0.1
    assert cfg.trainer.max_epochs == 10 and cfg.data.batch_size == 8
    assert cfg.data.image_size == 224 and not cfg.data.hflip  # a square resize, no augmentation
    assert set(cfg.callbacks.attention_images.attributes) <= set(ATTRIBUTE_NAMES)


@pytest.mark.parametrize("head", ["multitask", "abn", "baseline"])
def test_one_batch_on_celeba_format_data(tmp_path: Path, head: str):
    write_standin_celeba(tmp_path / "data", num_images=12, image_size=(40, 48))
    cfg = compose_train_config(tmp_path, [
        EXPERIMENT, f"model.head={head}", "model.arch=resnet18", "model.pretrained=false", "model.task_chunk=16",
        f"paths.data_dir={tmp_path / 'data'}", "data.image_size=32", "data.batch_size=4", "data.num_workers=0",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1", "callbacks.model_checkpoint=null",
    ])
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    per_attribute = {name: value for name, value in metrics.items() if name.startswith("test_attributes/")}
    assert sorted(per_attribute) == sorted(f"test_attributes/{name}" for name in ATTRIBUTE_NAMES)
    # acc is the mean of the 40 attribute accuracies
    assert metrics["test/acc"] == pytest.approx(sum(per_attribute.values()) / 40, abs=1e-6)
    assert ("test/acc_att" in metrics) == (head != "baseline")
    events = list((Path(cfg.paths.output_dir) / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent)).Reload()
    images = accumulator.Tags()["images"]
    assert images == (["val/attribute_maps"] if head == "multitask" else ["val/attention"])
    if head == "multitask":
        shown = accumulator.Images("val/attribute_maps")[-1]
        # input + the 8 attributes chosen in the experiment config, 4 images (the batch) as rows
        assert shown.width > shown.height


def test_a_misspelt_attribute_of_the_map_grid_stops_the_run_before_training(tmp_path: Path):
    write_standin_celeba(tmp_path / "data", num_images=12, image_size=(40, 48))
    cfg = compose_train_config(tmp_path, [
        EXPERIMENT, "model.arch=resnet18", "model.pretrained=false", f"paths.data_dir={tmp_path / 'data'}",
        "data.image_size=32", "data.num_workers=0", "callbacks.attention_images.attributes=[Smilng]",
    ])
    with pytest.raises(ValueError, match=r"attributes: Smilng not among the attributes \(Smilng: did you mean "
                                         r"Smiling\?\)"):
        train(cfg)
    assert not list(tmp_path.rglob("*.ckpt"))
