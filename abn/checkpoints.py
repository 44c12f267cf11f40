"""Reading the checkpoints ``abn-train`` writes: for resuming a run (``abn-train ckpt_path=``), for starting a new
run from its weights (``abn-train init_from=``) and for explaining its network (``abn-explain``), with one clear
message for each way a checkpoint can be wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

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
INIT_FIX = ("give the .ckpt file of an abn-train run, e.g. logs/train/runs/<date>/checkpoints/last.ckpt, or "
            "init_from=null to start from fresh weights")
# the model options that follow the data (the model config reads them from it) rather than a model.* override
DATA_DECIDED = {"num_classes": "classes", "in_chans": "input channels"}


def read_checkpoint(path: str, fix: str, key: str = "ckpt_path") -> dict[str, Any]:
    """The contents of a Lightning checkpoint file, read on the CPU without running code from it; a missing file
    is refused with ``fix`` (what to give instead), an unreadable one with the reader's error; ``key`` is the
    setting that named the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}={path} does not exist; {fix}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{key}={path} is not a readable Lightning checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(saved, dict):
        raise ValueError(f"{key}={path} is not a readable Lightning checkpoint (it holds a {type(saved).__name__})")
    return saved


def _identity(hparams: Any, key: str) -> Any:
    value = hparams.get(key)
    return ABSENT_OPTIONS.get(key) if value is None else value


def identity_differences(saved: dict[str, Any], model: L.LightningModule) -> dict[str, tuple[Any, Any]]:
    """``option → (checkpoint's value, model's value)`` for each :data:`MODEL_IDENTITY` option that differs."""
    return {key: (_identity(saved, key), _identity(model.hparams, key)) for key in MODEL_IDENTITY
            if _identity(saved, key) != _identity(model.hparams, key)}


def check_resume_checkpoint(path: str, model: L.LightningModule, training: bool = True) -> None:
    """Fail early, and say why, when ``ckpt_path`` is missing, unreadable, of another model or, when training is to
    continue from it, holds the weights only."""
    checkpoint = read_checkpoint(path, RESUME_FIX)
    if training and "optimizer_states" not in checkpoint:
        raise ValueError(f"ckpt_path={path} holds the weights only (no optimizer state, as a checkpoint saved with "
                         "save_weights_only), so training cannot continue from it; resume from a full checkpoint "
                         f"such as the run's last.ckpt, or explain it with abn-explain ckpt_path={path}")
    different = identity_differences(checkpoint.get("hyper_parameters") or {}, model)
    if different:
        details = ", ".join(f"{key}: checkpoint {old!r} vs config {new!r}" for key, (old, new) in different.items())
        raise ValueError(f"ckpt_path={path} holds another model ({details}); "
                         "set the model options to the checkpoint's values or start without ckpt_path")


def override_value(value: Any) -> str:
    """``value`` as Hydra's override grammar writes it (null, {key:value})."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{override_value(item)}" for key, item in value.items()) + "}"
    return str(value)


def saved_classes(checkpoint: dict[str, Any]) -> list[str]:
    """The class names the checkpoint's data module saved (its ``state_dict``, under the module's class name)."""
    for value in checkpoint.values():
        if isinstance(value, dict) and isinstance(value.get("classes"), list):
            return [str(name) for name in value["classes"]]
    return []


def load_initial_weights(path: str, model: L.LightningModule, classes: Sequence[str] = ()) -> dict[str, Any]:
    """Copy the network weights of an ``abn-train`` checkpoint into ``model`` (``abn-train init_from=``), with strict
    key checking; nothing else of the checkpoint (optimizer, schedule, epoch) is used. The checkpoint must hold the
    same network (what differs is named with the fix) and, where the data has the checkpoint's class names
    (``classes``), in the same order: otherwise each output would be trained as another class. Returns the
    checkpoint's settings (``hyper_parameters``)."""
    checkpoint = read_checkpoint(path, INIT_FIX, key="init_from")
    saved = checkpoint.get("hyper_parameters")
    state = checkpoint.get("state_dict")
    if not saved or "arch" not in saved or not isinstance(state, dict):
        raise ValueError(f"init_from={path} holds no abn model settings (hyper_parameters with arch, head, "
                         f"num_classes) or no weights; {INIT_FIX}")
    different = identity_differences(saved, model)
    if different:
        details = ", ".join(f"{key}: checkpoint {old!r} vs config {new!r}" for key, (old, new) in different.items())
        fixes = [f"use data with the checkpoint's {old} {DATA_DECIDED[key]} (the model takes them from the data)"
                 for key, (old, _) in different.items() if key in DATA_DECIDED]
        overrides = [f"model.{key}={override_value(old)}" for key, (old, _) in different.items()
                     if key not in DATA_DECIDED]
        if overrides:
            fixes.insert(0, "set " + " ".join(overrides))
        raise ValueError(f"init_from={path} holds another model ({details}); its weights fit only the same network: "
                         f"{'; '.join(fixes)}")
    trained_on = saved_classes(checkpoint)
    if classes and trained_on and list(classes) != trained_on and sorted(classes) == sorted(trained_on):
        raise ValueError(f"init_from={path} was trained on the classes {', '.join(trained_on)} in this order, the data "
                         f"has them as {', '.join(classes)}: each output would learn another class. Name the class "
                         "folders so that they sort in the checkpoint's order (scripts/export_maps.py does), e.g. "
                         f"0_{trained_on[0]}, 1_{trained_on[1]}, …")
    weights = {key[len("net."):]: value for key, value in state.items() if key.startswith("net.")}
    try:
        model.net.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise ValueError(f"init_from={path}: its weights do not fit the network of this config "
                         f"(arch={saved.get('arch')!r}, head={saved.get('head')!r}): {error}") from error
    return saved


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
