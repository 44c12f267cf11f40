"""The PyTorch port's multi-label loss as options of ABNModule: focal loss BCE·(1 − p_t)^γ and attribute weights
∝ exp(−frequency) from the training data (kept in the checkpoint); plain BCE stays the default."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra
from torch.utils.data import DataLoader, TensorDataset

from abn.data import MultiShapesDataModule
from abn.data.celeba import ATTRIBUTE_FILE, PARTITION_FILE, CelebADataModule
from abn.data.standins import write_standin_celeba
from abn.module import ABNModule, frequency_weights
from abn.train import train

from .conftest import compose_train_config, record_instantiated

TARGETS = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 1], [0, 1, 0, 1]]).float()


def reference_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float, weights: torch.Tensor) -> torch.Tensor:
    """The focal loss written another way: −w_t · (1 − p_t)^γ · log p_t, averaged over images and attributes."""
    log_p_true = torch.where(targets > 0.5, F.logsigmoid(logits), F.logsigmoid(-logits))
    return (-weights * (1 - log_p_true.exp()) ** gamma * log_p_true).mean()


class _Recorder:
    def __call__(self, name, value, **kwargs):
        pass


def tiny_multishapes(seed: int = 0) -> MultiShapesDataModule:
    return MultiShapesDataModule(image_size=40, train_size=8, val_size=4, test_size=4, batch_size=4, seed=seed)


def fit(module: ABNModule, datamodule, max_epochs: int = 1, ckpt_path=None) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", max_epochs=max_epochs, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer


def test_the_default_is_plain_bce():
    module = ABNModule(head="abn", num_classes=4, task="multilabel")
    assert (module.hparams.label_loss, module.hparams.attribute_weights) == ("bce", "none")
    assert "attribute_loss_weights" not in module.state_dict()  # the checkpoints of other models keep their keys


def test_focal_loss_with_gamma_0_and_uniform_weights_is_exactly_bce():
    torch.manual_seed(0)
    logits = torch.randn(6, 4) * 3
    bce = F.binary_cross_entropy_with_logits(logits, TARGETS)
    focal = ABNModule(head="abn", num_classes=4, task="multilabel", label_loss="focal", focal_gamma=0.0)
    weighted = ABNModule(head="abn", num_classes=4, task="multilabel", label_loss="focal", focal_gamma=0.0,
                         attribute_weights="frequency")
    weighted.attribute_loss_weights.copy_(frequency_weights(torch.full((4,), 0.3)))  # equal frequencies
    assert torch.equal(weighted.attribute_loss_weights, torch.ones(4))
    assert torch.equal(focal.criterion(logits, TARGETS), bce)
    assert torch.equal(weighted.criterion(logits, TARGETS), bce)


def test_focal_loss_with_gamma_2_and_weights_by_hand():
    # sigmoid(0) = 1/2, sigmoid(±ln 3) = 3/4 and 1/4
    logits = torch.tensor([[0.0, math.log(3)], [-math.log(3), math.log(3)]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    module = ABNModule(head="abn", num_classes=2, task="multilabel", label_loss="focal", focal_gamma=2.0,
                       attribute_weights="frequency")
    module.attribute_loss_weights.copy_(torch.tensor([0.5, 1.5]))
    by_hand = (
        0.5 * (1 - 1 / 2) ** 2 * math.log(2)  # p_t = 1/2
        + 1.5 * (1 - 1 / 4) ** 2 * math.log(4)  # predicted 3/4 for a 0: p_t = 1/4
        + 0.5 * (1 - 3 / 4) ** 2 * math.log(4 / 3)  # predicted 1/4 for a 0: p_t = 3/4
        + 1.5 * (1 - 3 / 4) ** 2 * math.log(4 / 3)  # p_t = 3/4
    ) / 4
    assert module.criterion(logits, targets).item() == pytest.approx(by_hand, rel=1e-6)


def test_frequency_weights_are_the_ports():
    weights = frequency_weights(torch.tensor([0.0, 1.0, 0.5]))
    expected = torch.tensor([1.0, math.exp(-1), math.exp(-0.5)])
    torch.testing.assert_close(weights, expected * 3 / expected.sum())
    assert weights.sum().item() == pytest.approx(3.0)


@pytest.mark.parametrize("head", ["abn", "multitask"])
def test_both_branches_train_on_the_focal_loss(head):
    module = ABNModule(arch="resnet20", head=head, num_classes=4, task="multilabel", label_loss="focal",
                       focal_gamma=2.0, attribute_weights="frequency").eval()
    weights = torch.tensor([0.4, 0.8, 1.2, 1.6])
    module.attribute_loss_weights.copy_(weights)
    module.log = _Recorder()
    torch.manual_seed(0)
    images = torch.randn(6, 3, 32, 32)
    loss = module._step((images, TARGETS), "val")
    with torch.no_grad():
        out = module.net(images)
    expected = reference_loss(out.att_logits, TARGETS, 2.0, weights) + reference_loss(out.logits, TARGETS, 2.0, weights)
    torch.testing.assert_close(loss, expected)
    plain = (F.binary_cross_entropy_with_logits(out.att_logits, TARGETS)
             + F.binary_cross_entropy_with_logits(out.logits, TARGETS))
    assert not torch.isclose(loss, plain)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"task": "multiclass", "label_loss": "focal"}, "label_loss=focal apply to multi-label data.*"
                                                        "task=multiclass.*: set model.label_loss=bce, or choose"),
        ({"task": "multiclass", "label_loss": "focal", "attribute_weights": "frequency"},
         "label_loss=focal and attribute_weights=frequency apply to multi-label data.*set model.label_loss=bce and "
         "model.attribute_weights=none"),
        ({"task": "multilabel", "label_loss": "focal", "focal_gamma": -1.0}, "focal_gamma must be 0 or more.*got -1"),
        ({"task": "multilabel", "label_loss": "Focal"}, "label_loss must be one of bce, focal.*got 'Focal'"),
        ({"task": "multilabel", "attribute_weights": "inverse"}, "attribute_weights must be one of none, frequency"),
    ],
)
def test_bad_loss_settings_name_the_fix(options, message):
    with pytest.raises(ValueError, match=message):
        ABNModule(head="abn", num_classes=4, **options)


def test_frequency_weights_need_a_data_module_that_counts_labels():
    module = ABNModule(head="abn", num_classes=4, task="multilabel", attribute_weights="frequency")
    loader = DataLoader(TensorDataset(torch.randn(6, 3, 32, 32), TARGETS), batch_size=3)
    trainer = L.Trainer(accelerator="cpu", fast_dev_run=True, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"no data module gives these frequencies.*data=celeba, data=multishapes.*"
                                         r"or set model.attribute_weights=none"):
        trainer.fit(module, loader)


def test_multishapes_frequencies_are_the_training_splits():
    data = tiny_multishapes()
    data.setup("fit")
    present = torch.stack([data.train_set[index][1] for index in range(len(data.train_set))])
    torch.testing.assert_close(data.train_label_frequencies(), present.mean(dim=0))
    assert not torch.equal(data.train_label_frequencies(), tiny_multishapes(seed=1).train_label_frequencies())


def test_celeba_frequencies_are_the_training_partitions(tmp_path: Path):
    folder = write_standin_celeba(tmp_path, num_images=12, image_size=(32, 40))
    train_names = [line.split()[0] for line in (folder / PARTITION_FILE).read_text().splitlines() if line.split()[1] == "0"]
    rows = {fields[0]: fields[1:] for fields in map(str.split, (folder / ATTRIBUTE_FILE).read_text().splitlines()[2:])}
    expected = torch.tensor([[value == "1" for value in rows[name]] for name in train_names]).float().mean(dim=0)
    data = CelebADataModule(root=str(tmp_path), image_size=32, num_workers=0, pin_memory=False)
    torch.testing.assert_close(data.train_label_frequencies(), expected)
    with pytest.raises(ValueError, match="data.attribute=Smiling learns one attribute as two classes: set "
                                         "data.attribute=null"):
        CelebADataModule(root=str(tmp_path), attribute="Smiling").train_label_frequencies()


def test_the_weights_come_from_the_training_data_and_travel_with_the_checkpoint(tmp_path: Path):
    data = tiny_multishapes()
    module = ABNModule(arch="resnet20", head="abn", num_classes=5, task="multilabel", label_loss="focal",
                       attribute_weights="frequency")
    trainer = fit(module, data)
    weights = frequency_weights(data.train_label_frequencies())
    assert torch.equal(module.attribute_loss_weights, weights) and not torch.equal(weights, torch.ones(5))
    path = tmp_path / "focal.ckpt"
    trainer.save_checkpoint(path)

    reloaded = ABNModule.load_from_checkpoint(path, weights_only=True)  # evaluation: the training data's weights
    assert reloaded.hparams.label_loss == "focal" and torch.equal(reloaded.attribute_loss_weights, weights)
    # resuming on other data keeps the run's weights
    resumed = ABNModule(arch="resnet20", head="abn", num_classes=5, task="multilabel", label_loss="focal",
                        attribute_weights="frequency")
    fit(resumed, tiny_multishapes(seed=1), max_epochs=2, ckpt_path=str(path))
    assert torch.equal(resumed.attribute_loss_weights, weights)
    # and a model without the weights loads the checkpoint too (strictly)
    assert "attribute_loss_weights" not in ABNModule.load_from_checkpoint(path, attribute_weights="none").state_dict()


def test_a_checkpoint_without_the_weights_resumes_with_them(tmp_path: Path):
    plain = ABNModule(arch="resnet20", head="abn", num_classes=5, task="multilabel")
    trainer = fit(plain, tiny_multishapes())
    path = tmp_path / "bce.ckpt"
    trainer.save_checkpoint(path)
    assert "attribute_loss_weights" not in torch.load(path, weights_only=True)["state_dict"]

    data = tiny_multishapes()
    weighted = ABNModule(arch="resnet20", head="abn", num_classes=5, task="multilabel", label_loss="focal",
                         attribute_weights="frequency")
    fit(weighted, data, max_epochs=2, ckpt_path=str(path))
    assert torch.equal(weighted.attribute_loss_weights, frequency_weights(data.train_label_frequencies()))


def test_abn_train_with_the_ports_loss_records_it(tmp_path: Path, monkeypatch):
    """A multi-task ABN run through the same code as abn-train: trains, and the options are in the checkpoint's
    hyper-parameters and in TensorBoard's HPARAMS."""
    built = record_instantiated(monkeypatch)
    cfg = compose_train_config(tmp_path, [
        "data=multishapes", "model.head=multitask", "model.label_loss=focal", "model.focal_gamma=1.5",
        "model.attribute_weights=frequency", "data.image_size=40", "data.train_size=8", "data.val_size=4",
        "data.test_size=4", "data.batch_size=4", "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
        "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1", "callbacks.attention_images=null",
    ])
    GlobalHydra.instance().clear()
    metrics = train(cfg)
    assert math.isfinite(metrics["test/loss"])
    datamodule, model = (next(item for item in built if isinstance(item, kind))
                         for kind in (MultiShapesDataModule, ABNModule))
    weights = frequency_weights(datamodule.train_label_frequencies())
    assert torch.equal(model.attribute_loss_weights, weights)

    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert {key: saved["hyper_parameters"][key] for key in ("label_loss", "focal_gamma", "attribute_weights")} == {
        "label_loss": "focal", "focal_gamma": 1.5, "attribute_weights": "frequency"}
    assert torch.equal(saved["state_dict"]["attribute_loss_weights"], weights)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    (events,) = {path.parent for path in (tmp_path / "tensorboard").rglob("events.out.tfevents.*")}
    content = EventAccumulator(str(events)).Reload().PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["model.label_loss"].string_value == "focal"
    assert session.hparams["model.attribute_weights"].string_value == "frequency"
    assert session.hparams["model.focal_gamma"].number_value == 1.5
