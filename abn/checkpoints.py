"""Reading the checkpoints ``abn-train`` writes: for resuming a run (``abn-train ckpt_path=``) and for explaining
its network (``abn-explain``), with one clear message for each way a checkpoint can be wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .module import ABNModule

# the model options that must match for a checkpoint's weights and optimizer state to continue in a model
MODEL_IDENTITY = ("arch", "head", "num_classes", "in_chans", "split", "branch_depth", "model_kwargs")
# what options a checkpoint written before they existed means by their absence (no model_kwargs is the same as {})
ABSENT_OPTIONS = {"branch_depth": "full", "model_kwargs": {}}
RESUME_FIX = ("give the path of a .ckpt file, e.g. logs/train/runs/<date>/checkpoints/last.ckpt, or ckpt_path=null "
              "to start afresh")
EXPLAIN_FIX = "give the .ckpt file written by abn-train, e.g. logs/train/runs/<date>/checkpoints/last.ckpt"


def read_checkpoint(path: str, fix: str) -> dict[str, Any]:
    """The contents of a Lightning checkpoint file, read on the CPU without running code from it; a missing file
    is refused with ``fix`` (what to give instead), an unreadable one with the reader's error."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"ckpt_path={path} does not exist; {fix}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"ckpt_path={path} is not a readable Lightning checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(saved, dict):
        raise ValueError(f"ckpt_path={path} is not a readable Lightning checkpoint (it holds a {type(saved).__name__})")
    return saved


def check_resume_checkpoint(path: str, model: L.LightningModule, training: bool = True) -> None:
    """Fail early, and say why, when ``ckpt_path`` is missing, unreadable, of another model or, when training is to
    continue from it, holds the weights only."""
    checkpoint = read_checkpoint(path, RESUME_FIX)
    if training and "optimizer_states" not in checkpoint:
        raise ValueError(f"ckpt_path={path} holds the weights only (no optimizer state, as a checkpoint saved with "
                         "save_weights_only), so training cannot continue from it; resume from a full checkpoint "
                         f"such as the run's last.ckpt, or explain it with abn-explain ckpt_path={path}")
    saved = checkpoint.get("hyper_parameters") or {}

    def identity(hparams: Any, key: str) -> Any:
        value = hparams.get(key)
        return ABSENT_OPTIONS.get(key) if value is None else value

    different = {key: (identity(saved, key), identity(model.hparams, key)) for key in MODEL_IDENTITY
                 if identity(saved, key) != identity(model.hparams, key)}
    if different:
        details = ", ".join(f"{key}: checkpoint {old!r} vs config {new!r}" for key, (old, new) in different.items())
        raise ValueError(f"ckpt_path={path} holds another model ({details}); "
                         "set the model options to the checkpoint's values or start without ckpt_path")


def load_network(path: str, device: torch.device) -> nn.Module:
    """The network of an ``abn-train`` checkpoint, in eval mode on ``device``; a clear error for anything else."""
    saved = read_checkpoint(path, EXPLAIN_FIX)
    hparams = saved.get("hyper_parameters")
    if not hparams or "arch" not in hparams or "state_dict" not in saved:
        raise ValueError(f"ckpt_path={path} holds no abn model settings (hyper_parameters with arch, head, num_classes) "
                         "or no weights; explain a checkpoint written by abn-train")
    try:
        module = ABNModule.load_from_checkpoint(path, map_location=device, weights_only=True)
    except Exception as error:
        raise ValueError(f"ckpt_path={path}: its weights do not fit the model its settings describe "
                         f"(arch={hparams.get('arch')!r}, head={hparams.get('head')!r}): {error}") from error
    return module.net.to(device).eval()


def training_data_config(ckpt_path: str) -> DictConfig:
    """The ``data`` section of the run that wrote the checkpoint (``<run>/.hydra/config.yaml``)."""
    checkpoint = Path(ckpt_path).resolve()
    for run_dir in (checkpoint.parent.parent, checkpoint.parent):
        saved = run_dir / ".hydra" / "config.yaml"
        if saved.is_file():
            config = OmegaConf.load(saved)
            if "data" not in config:
                raise ValueError(f"{saved} has no data section; choose the data with data=<name>")
            return config.data
    raise FileNotFoundError(f"found no training config for {ckpt_path} (looked for .hydra/config.yaml in "
                            f"{checkpoint.parent.parent} and {checkpoint.parent}); choose the data with data=<name> "
                            "and its options, e.g. data=shapes")
