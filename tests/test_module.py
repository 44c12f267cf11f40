"""ABNModule: the loss, the metrics, the scheduler length, checkpoints."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from abn.module import ABNModule, TrainingDiverged


def _batch():
    torch.manual_seed(0)
    return torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])


class _Recorder:
    def __init__(self):
        self.logged = {}

    def __call__(self, name, value, **kwargs):
        self.logged[name] = value


def test_loss_is_the_weighted_sum_of_both_branches():
    module = ABNModule(head="abn", num_classes=3, attention_loss_weight=0.3, perception_loss_weight=2.0).eval()
    module.log = _Recorder()
    images, labels = _batch()
    loss = module._step((images, labels), "val")
    with torch.no_grad():
        out = module.net(images)
    expected = 0.3 * F.cross_entropy(out.att_logits, labels) + 2.0 * F.cross_entropy(out.logits, labels)
    torch.testing.assert_close(loss, expected)
    assert {"val/loss", "val/loss_att", "val/loss_per", "val/acc", "val/acc_att"} <= set(module.log.logged)


@pytest.mark.parametrize("head", ["baseline", "cam"])
def test_single_branch_heads_train_on_their_one_loss(head):
    module = ABNModule(head=head, num_classes=3).eval()
    module.log = _Recorder()
    images, labels = _batch()
    loss = module._step((images, labels), "train")
    with torch.no_grad():
        torch.testing.assert_close(loss, F.cross_entropy(module.net(images).logits, labels))
    assert "train/acc_att" not in module.log.logged and "train/loss_att" not in module.log.logged


def test_accuracy_is_plain_top1_not_macro():
    module = ABNModule(head="baseline", num_classes=3)
    metric = module.metrics["val_perception"]["acc"]
    # 3 of 4 right, but class 2 (one sample) wrong: micro 0.75, macro would be 0.667
    metric.update(torch.tensor([[9.0, 0, 0], [9.0, 0, 0], [0, 9.0, 0], [9.0, 0, 0]]), torch.tensor([0, 0, 1, 2]))
    assert metric.compute().item() == pytest.approx(0.75)


def _fit(module, max_epochs=2, **trainer_kwargs):
    images, labels = _batch()
    loader = DataLoader(TensorDataset(images, labels), batch_size=3)
    trainer = L.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, **trainer_kwargs)
    trainer.fit(module, loader, loader)
    return trainer


def test_scheduler_length_is_filled_from_the_run():
    cosine = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR)
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    module = ABNModule(head="baseline", num_classes=3, optimizer=sgd, scheduler=cosine, scheduler_interval="step")
    trainer = _fit(module, max_epochs=2)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.T_max == 4  # 2 epochs × 2 batches
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)

    by_epoch = ABNModule(head="baseline", num_classes=3, optimizer=sgd, scheduler=cosine, scheduler_interval="epoch")
    assert _fit(by_epoch, max_epochs=3).lr_scheduler_configs[0].scheduler.T_max == 3


def test_scheduler_interval_is_checked():
    with pytest.raises(ValueError, match="'epoch' or 'step'"):
        ABNModule(scheduler_interval="batch")


def test_checkpoint_reloads_to_identical_logits(tmp_path):
    module = ABNModule(head="abn", num_classes=3)
    trainer = _fit(module, max_epochs=1)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = ABNModule.load_from_checkpoint(path, weights_only=True).eval()
    assert reloaded.hparams.head == "abn" and reloaded.hparams.num_classes == 3
    images, _ = _batch()
    module.eval()
    with torch.no_grad():
        a, b = module(images), reloaded(images)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.attention, b.attention)


def _fit_one_batch(module: ABNModule, **trainer_options) -> None:
    images, labels = _batch()
    loader = DataLoader(TensorDataset(images, labels), batch_size=6)
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False, **trainer_options)
    trainer.fit(module, loader, loader)


def test_channels_last_switch_stores_weights_nhwc_and_trains():
    module = ABNModule(arch="resnet20", head="abn", num_classes=3, channels_last=True)
    conv = module.net.features.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    _fit_one_batch(module)


def test_compile_switch_keeps_the_checkpoint_keys():
    plain = ABNModule(arch="resnet20", head="abn", num_classes=3)
    compiled = ABNModule(arch="resnet20", head="abn", num_classes=3, compile=True)
    assert compiled.net._compiled_call_impl is not None  # compiled lazily, at the first forward
    assert list(compiled.state_dict()) == list(plain.state_dict())


def test_bf16_autocast_through_the_trainer():
    module = ABNModule(arch="resnet20", head="abn", num_classes=3)
    _fit_one_batch(module, precision="bf16-mixed")
    assert torch.isfinite(next(module.parameters())).all()


def test_top5_is_logged_when_asked_and_refused_for_few_classes():
    module = ABNModule(arch="resnet20", head="baseline", num_classes=8, top5=True).eval()
    module.log = _Recorder()
    module._step((torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 7, 3])), "test")
    assert "test/acc5" in module.log.logged
    with pytest.raises(ValueError, match="top5=true needs more than 5 classes"):
        ABNModule(num_classes=5, top5=True)


def test_model_options_reach_the_builder():
    module = ABNModule(arch="wrn16_8", head="abn", num_classes=3, branch_depth="light", model_kwargs={"widen_factor": 1})
    assert len(module.net.attention_branch.stage) == 1
    assert module.net.last_stage.block3[0].conv1.out_channels == 64  # 64 × widen_factor 1


def test_multilabel_task_uses_one_binary_loss_per_attribute_and_mean_attribute_accuracy():
    module = ABNModule(head="abn", num_classes=4, task="multilabel").eval()
    module.log = _Recorder()
    images = _batch()[0]
    targets = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 1], [0, 1, 0, 1]]).float()
    loss = module._step((images, targets), "val")
    with torch.no_grad():
        out = module.net(images)
    expected = (F.binary_cross_entropy_with_logits(out.att_logits, targets)
                + F.binary_cross_entropy_with_logits(out.logits, targets))
    torch.testing.assert_close(loss, expected)
    metric = ABNModule(head="baseline", num_classes=2, task="multilabel").metrics["val_perception"]["acc"]
    # attribute 0 right 2 of 2, attribute 1 right 1 of 2: the mean of the two accuracies is 0.75
    metric.update(torch.tensor([[5.0, 5.0], [-5.0, 5.0]]), torch.tensor([[1, 1], [0, 0]]))
    assert metric.compute().item() == pytest.approx(0.75)


def test_unknown_task_and_multilabel_top5_are_refused():
    with pytest.raises(ValueError, match="task must be 'multiclass' or 'multilabel'"):
        ABNModule(num_classes=3, task="regression")
    with pytest.raises(ValueError, match="top5=true needs task=multiclass"):
        ABNModule(num_classes=40, task="multilabel", top5=True)


def test_the_multitask_head_needs_multi_label_data():
    with pytest.raises(ValueError, match="head=multitask learns one attention map per attribute of multi-label data"):
        ABNModule(arch="resnet20", head="multitask", num_classes=5, task="multiclass")
    with pytest.raises(ValueError, match="2 names for task=multilabel, num_classes=5"):
        ABNModule(arch="resnet20", head="multitask", num_classes=5, task="multilabel", attribute_names=["a", "b"])
    module = ABNModule(arch="resnet20", head="multitask", num_classes=2, task="multilabel", attribute_names=["a", "b"])
    assert module.hparams.attention_mode == "multiply"  # the head's own rule, recorded as resolved
    assert module.attribute_names == ["a", "b"]


class _NanAttentionFrom(L.Callback):
    """From batch ``batch`` of epoch ``epoch`` on, the attention branch's logits are nan (the rest stays finite);
    keeps the parameters as they were just before that step."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch, self.parameters_before = epoch, batch, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) != (self.epoch, self.batch):
            return
        self.parameters_before = {name: value.detach().clone() for name, value in module.named_parameters()}
        forward = module.net.forward
        module.net.forward = lambda x: forward(x)._replace(att_logits=torch.full_like(forward(x).att_logits, torch.nan))


def _fit_until_it_fails(module, tmp_path, *callbacks, max_epochs=3, **trainer_kwargs):
    """Fit 2 steps an epoch, a checkpoint per epoch (epoch_XXX.ckpt and last.ckpt); returns the error it stops with."""
    images, labels = _batch()
    loader = DataLoader(TensorDataset(images, labels), batch_size=3)
    saver = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="epoch_{epoch:03d}", save_last=True,
                            auto_insert_metric_name=False)
    trainer = L.Trainer(max_epochs=max_epochs, logger=False, callbacks=[saver, *callbacks], enable_progress_bar=False,
                        enable_model_summary=False, **trainer_kwargs)
    with pytest.raises(TrainingDiverged) as stopped:
        trainer.fit(module, loader, loader)
    return str(stopped.value)


def _saved_steps(folder):
    return {path.name: torch.load(path, weights_only=True)["global_step"] for path in sorted(folder.glob("*.ckpt"))}


def test_a_nan_loss_stops_training_before_its_update_naming_the_step_the_term_and_the_last_good_checkpoint(tmp_path):
    module = ABNModule(head="abn", num_classes=3, optimizer=functools.partial(torch.optim.SGD, lr=0.05))
    poison = _NanAttentionFrom(epoch=1, batch=1)
    message = _fit_until_it_fails(module, tmp_path, poison)
    assert message.startswith("Training diverged at global step 3 (epoch 1, batch 1; both counted from 0): the "
                              "attention loss (train/loss_att) became nan.\n")
    assert "perception" not in message
    assert f"The last good checkpoint is {tmp_path / 'checkpoints' / 'last.ckpt'}" in message
    assert "model.optimizer.lr=0.005 (this run: 0.05)" in message
    for name, value in module.named_parameters():  # no update from the nan loss
        assert torch.equal(value, poison.parameters_before[name]), name
    assert _saved_steps(tmp_path / "checkpoints") == {"epoch_000.ckpt": 2, "last.ckpt": 2}  # nothing after epoch 0


class _InfWeightAfter(L.Callback):
    """After batch ``batch`` of epoch ``epoch``, a weight becomes inf (as an update can make it with a finite loss)."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            with torch.no_grad():
                module.net.features.conv1.weight[0, 0, 0, 0] = torch.inf


def test_weights_that_are_nan_or_inf_are_never_saved(tmp_path):
    message = _fit_until_it_fails(ABNModule(head="abn", num_classes=3), tmp_path, _InfWeightAfter(epoch=1, batch=1))
    assert message.startswith("Training diverged: after global step 4 (epoch 1, counted from 0) the network's weights "
                              "or statistics are nan or inf (1 of its tensors, e.g. net.features.conv1.weight)")
    assert f"The last good checkpoint is {tmp_path / 'checkpoints' / 'last.ckpt'}" in message
    assert _saved_steps(tmp_path / "checkpoints") == {"epoch_000.ckpt": 2, "last.ckpt": 2}


def test_a_nan_loss_on_another_process_stops_this_one_too(tmp_path, monkeypatch):
    """DDP: each process checks its own loss; they agree (an all-reduce) before any stops, and name the process."""
    module = ABNModule(head="abn", num_classes=3)
    # the step's one all-reduce sums (non-finite losses, stops asked for) over the processes: one more nan elsewhere
    monkeypatch.setattr(L.pytorch.strategies.SingleDeviceStrategy, "reduce",
                        lambda strategy, value, reduce_op=None, **_: value + torch.tensor([1, 0])
                        if isinstance(value, torch.Tensor) and value.shape == (2,) else value)
    nan_on_process_1 = torch.tensor([1, 0, 0, 1])  # perception, attention, supervision, weighted sum
    monkeypatch.setattr(module, "all_gather", lambda codes: torch.stack([codes, nan_on_process_1]))
    message = _fit_until_it_fails(module, tmp_path)
    assert message.startswith("Training diverged at global step 0 (epoch 0, batch 0; both counted from 0): the "
                              "perception loss (train/loss_per) became nan on process 1 of 2.\n")
    assert "No checkpoint had been written yet." in message
