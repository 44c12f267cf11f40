"""abn.checkpoint_io: a checkpoint save that fails midway leaves the previous one loadable and nothing else behind;
the trainer of the default config writes its checkpoints that way."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

import abn.checkpoint_io
from abn.checkpoint_io import AtomicCheckpointIO

from .conftest import compose_train_config


def _write_half_then_fail(checkpoint, file) -> None:
    file.write(b"PK\x03\x04" + bytes(4096))  # the start of a zip-format checkpoint, as torch.save begins
    raise OSError(errno.ENOSPC, "No space left on device")


def _fail(*args) -> None:
    raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize("failing", ["torch.save", "fsync", "replace"])
def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_loadable_and_no_temporary_file(
        tmp_path: Path, monkeypatch, failing: str):
    last = tmp_path / "checkpoints" / "last.ckpt"
    writer = AtomicCheckpointIO()
    writer.save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, last)
    before = last.read_bytes()

    target, name, replacement = {"torch.save": (torch, "save", _write_half_then_fail),
                                 "fsync": (os, "fsync", _fail), "replace": (os, "replace", _fail)}[failing]
    monkeypatch.setattr(target, name, replacement)
    with pytest.raises(OSError):
        writer.save_checkpoint({"epoch": 2, "weights": torch.zeros(3)}, last)
    monkeypatch.undo()

    assert last.read_bytes() == before
    assert writer.load_checkpoint(last, weights_only=True)["epoch"] == 1
    assert sorted(path.name for path in last.parent.iterdir()) == ["last.ckpt"]


def test_the_new_file_is_written_beside_its_name_and_renamed_onto_it(tmp_path: Path, monkeypatch):
    """One file system: the rename is one step (Lightning's writer stages it in /tmp and may copy it over the old
    file), and it happens only once the file is complete on disk."""
    last = tmp_path / "checkpoints" / "last.ckpt"
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda descriptor: (events.append("fsync"), real_fsync(descriptor))[1])
    monkeypatch.setattr(os, "replace", lambda source, target: (events.append((Path(source), Path(target))),
                                                                real_replace(source, target))[1])
    AtomicCheckpointIO().save_checkpoint({"epoch": 3}, str(last))

    (renamed,) = [event for event in events if isinstance(event, tuple)]
    assert events.index("fsync") < events.index(renamed)
    assert renamed[1] == last and renamed[0].parent == last.parent and renamed[0].name.startswith(".last.ckpt.")
    assert torch.load(last, weights_only=True) == {"epoch": 3}
    assert oct(last.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # as any file the run writes, not 0o600


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_the_trainer_of_the_default_config_writes_checkpoints_atomically(tmp_path: Path, clear_hydra):
    cfg = compose_train_config(tmp_path, ["trainer=cpu", "trainer.precision=32-true"])  # auto is settled by train()
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer.strategy.checkpoint_io, abn.checkpoint_io.AtomicCheckpointIO)


def test_the_latest_checkpoint_is_found_by_its_fixed_name_when_the_processes_did_not_report_it(tmp_path: Path):
    """After a ddp_spawn run the main process's callbacks know no paths: the summary still names last.ckpt."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    from abn.checkpoint_io import latest_checkpoint

    callbacks = [ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None),
                 ModelCheckpoint(dirpath=tmp_path, filename="epoch_{epoch:03d}", monitor="val/acc", mode="max")]
    trainer = SimpleNamespace(checkpoint_callbacks=callbacks)
    assert latest_checkpoint(trainer) == ""  # nothing written yet
    (tmp_path / "last.ckpt").write_bytes(b"saved by rank 0")
    assert latest_checkpoint(trainer) == str(tmp_path / "last.ckpt")
