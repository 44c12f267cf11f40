"""Checkpoint files written so that a save never destroys the previous good one.

Lightning's own writer (``TorchCheckpointIO``) stages a checkpoint in the system's temporary folder and then moves it
onto its name; where that folder is on another file system the move is a copy onto the old file, so a run killed
during the copy leaves a truncated ``last.ckpt`` and no earlier one. :class:`AtomicCheckpointIO` (set in
``conf/trainer/default.yaml`` as the trainer's plugin) writes beside the target instead and renames in one step.

:func:`latest_checkpoint` names the checkpoint a run wrote last (``last.ckpt``), the one to resume from.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

TEMPORARY_SUFFIX = ".tmp"


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _open_temporary_beside(path: Path) -> tuple[Path, BinaryIO]:
    """A new hidden file ``.<name>.<random>.tmp`` in ``path``'s folder, opened for writing with the usual permissions
    (``0o666`` less the umask, as any file the run writes)."""
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        return temporary, os.fdopen(descriptor, "wb")


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write`` the file's content to a temporary file in ``path``'s folder, flush it to disk, then rename it onto
    ``path`` (``os.replace``: one step on one file system). Until then an existing ``path`` stays as it was; if
    ``write`` fails, the temporary file is removed and the error raised."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary, file = _open_temporary_beside(path)
    try:
        with file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoints, each written through :func:`write_atomically`: the previous
    ``last.ckpt`` (or best checkpoint) stays loadable until the new one is complete on disk. Remote paths
    (``s3://…``) keep Lightning's own writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        local = Path(str(path).removeprefix("file://"))
        write_atomically(local, lambda file: torch.save(checkpoint, file))


def _newest_last(names: set[str]) -> list[Path]:
    """The files among ``names`` that are on disk, oldest first; at the same moment ``last.ckpt`` (the name users
    know) comes last."""
    files = {Path(name) for name in names if name and Path(name).is_file()}
    return sorted(files, key=lambda file: (file.stat().st_mtime_ns, file.name == "last.ckpt"))


def written_checkpoints(trainer: Trainer) -> list[Path]:
    """Every checkpoint file the trainer's checkpoint callbacks wrote that is on disk, the newest last."""
    named: set[str] = set()
    for callback in trainer.checkpoint_callbacks:
        named.update([getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", ""),
                      *getattr(callback, "best_k_models", {})])
    return _newest_last(named)


def latest_checkpoint(trainer: Trainer) -> str:
    """The newest checkpoint file the trainer's checkpoint callbacks keep up to date (``last.ckpt`` with the default
    callbacks), or ``""``. Not ``trainer.checkpoint_callback``: that is the best-on-``val/acc`` one, whose file can be
    many epochs old."""
    named: set[str] = set()
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            named.add(callback.last_model_path)
            if callback.monitor is None:  # keeps the latest epoch (or step)
                named.add(callback.best_model_path)
                if callback.dirpath and callback.filename and "{" not in callback.filename:
                    # its fixed name: after a ddp_spawn run the paths the processes wrote are not sent back
                    named.add(os.path.join(callback.dirpath, callback.filename + callback.FILE_EXTENSION))
    newest = _newest_last(named)
    return str(newest[-1]) if newest else ""
