"""abn-train on a run that diverges: it stops at the first nan or inf loss with one message (the step, the loss term,
the last good checkpoint, a lower learning rate), exits with a failure status, and writes no checkpoint after it."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import torch

from abn.train import main

from .conftest import TINY_SHAPES, run_cli


class NanImagesFrom(L.Callback):
    """From batch ``batch`` of epoch ``epoch`` on, every training image is nan (a run diverging at a known step)."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) >= (self.epoch, self.batch):
            batch[0].fill_(torch.nan)


def test_a_huge_learning_rate_stops_the_run_with_a_message_and_a_failure_status(tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(main, [*TINY_SHAPES, "model.optimizer.lr=1e6", "trainer.max_epochs=2"], tmp_path,
                             monkeypatch, capsys, expect_success=False)
    printed = out + err
    assert code != 0
    assert re.search(r"Training diverged(:)? (at|after) global step \d+ \(epoch 0", printed), printed[-3000:]
    assert "Train again with a lower learning rate, e.g. model.optimizer.lr=100000 (this run: 1e+06)" in printed
    assert "Traceback" not in printed and "Training finished" not in printed
    assert not list(tmp_path.rglob("*.ckpt"))
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()  # kept: its log and curves show the divergence
    assert "Training diverged" in (run / "train.log").read_text() and list(run.rglob("events.out.tfevents.*"))


def test_the_checkpoint_of_the_last_finished_epoch_is_kept_and_named(tmp_path, monkeypatch, capsys):
    poison = ["+callbacks.nan_images._target_=tests.test_divergence.NanImagesFrom", "+callbacks.nan_images.epoch=1",
              "+callbacks.nan_images.batch=1"]
    code, out, err = run_cli(main, [*TINY_SHAPES, "trainer.max_epochs=3", *poison], tmp_path, monkeypatch, capsys,
                             expect_success=False)
    printed = out + err
    assert code != 0 and "Traceback" not in printed
    assert ("Training diverged at global step 5 (epoch 1, batch 1; both counted from 0): the perception loss "
            "(train/loss_per) became nan, the attention loss (train/loss_att) became nan.") in printed, printed[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    named = Path(re.search(r"The last good checkpoint is (\S+) \(all of them: (\S+)\)", printed)[1])
    assert named.parent == run / "checkpoints" and named.is_file()
    assert f"init_from={named} starts that run from the last good weights" in printed
    saved = {path.name: torch.load(path, weights_only=True) for path in (run / "checkpoints").glob("*.ckpt")}
    assert saved and all(checkpoint["global_step"] == 4 for checkpoint in saved.values())  # epoch 0's 4 steps only
    assert all(value.isfinite().all() for checkpoint in saved.values() for value in checkpoint["state_dict"].values()
               if value.is_floating_point())
