"""The attention-image callback: a figure per validation epoch, none (with a warning) for a diverged network."""

from __future__ import annotations

import logging
import subprocess
import sys
from types import SimpleNamespace

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from abn.callbacks import AttentionImageLogger
from abn.module import ABNModule


def test_a_network_with_nan_outputs_gets_a_warning_instead_of_figures(tmp_path, monkeypatch, caplog):
    images = torch.rand(4, 3, 32, 32)
    datamodule = SimpleNamespace(val_dataloader=lambda: DataLoader(TensorDataset(images, torch.zeros(4).long()),
                                                                   batch_size=2))
    logger = TensorBoardLogger(tmp_path)
    logged = []
    monkeypatch.setattr(logger.experiment, "add_image", lambda tag, *args, **kwargs: logged.append(tag))
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, current_epoch=0, max_epochs=1, global_step=1,
                              loggers=[logger], datamodule=datamodule)
    module = ABNModule(head="abn", num_classes=3).eval()
    callback = AttentionImageLogger(num_images=4)

    callback.on_validation_epoch_end(trainer, module)
    assert logged == ["val/attention"]

    with torch.no_grad():
        module.net.features.conv1.weight.fill_(torch.nan)  # as after a run diverged
    with caplog.at_level(logging.WARNING, logger="abn"):
        callback.on_validation_epoch_end(trainer, module)
    assert logged == ["val/attention"]  # nothing more
    assert "no figures for epoch 0: the network's outputs are nan or inf for 4 of its 4 fixed validation images" in \
        caplog.text


def test_a_ddp_process_destroys_its_process_group_when_it_exits(tmp_path):
    """The gloo group of a DDP process is gone before interpreter shutdown (a group left to it could abort the
    process with SIGABRT after its work was done); also after a second setup (fit, then test)."""
    script = f"""
import atexit, torch.distributed as dist
from abn.callbacks import DestroyProcessGroupAtExit
# atexit runs last-registered first: this check runs after the callback's handler
atexit.register(lambda: print("initialized at exit:", dist.is_initialized(), flush=True))
dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
for stage in ("fit", "test"):
    DestroyProcessGroupAtExit().setup(None, None, stage)
print("initialized after setup:", dist.is_initialized(), flush=True)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["initialized after setup: True", "initialized at exit: False"]
