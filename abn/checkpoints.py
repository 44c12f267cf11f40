"""Reading the checkpoints ``abn-train`` writes: for resuming a run (``abn-train ckpt_path=``), for starting a new
run from its weights (``abn-train init_from=``) and for explaining its network (``abn-explain``), with one clear
message for each way a checkpoint can be wrong.

The settings saved beside a checkpoint (``<run>/.hydra/``) are data: what is read from them may name this project's
own classes, never choose anything else for Hydra's ``instantiate`` to call (:func:`chosen_calls`)."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, grammar_parser
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser
from torch import nn

from .config import config_dir, valid_names
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
# the other saved model options that define what the network computes and what it is trained on (the loss, what is
# frozen): a resumed run continues the checkpoint's training, so they must match too; a new run from the weights
# (init_from=) may change them.
TRAINING_IDENTITY = ("attention_mode", "map_kernel_size", "task", "task_head", "map_pooling", "map_activation",
                     "label_loss", "focal_gamma", "attribute_weights", "attention_loss_weight",
                     "perception_loss_weight", "attention_supervision", "freeze_features")
# the keys by which Hydra's instantiate chooses what it calls and how
CALL_KEYS = ("_target_", "_partial_", "_args_", "_convert_", "_recursive_")
# the resolvers a setting read from a run folder may use: each gives a plain value (a string or a number), never
# settings with a _target_ (as oc.create, oc.decode or hydra: could)
PLAIN_RESOLVERS = ("abn.cwd", "abn.workers", "abn.names", "abn.job_folder", "oc.env")
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


def training_differences(saved: dict[str, Any], model: L.LightningModule,
                         keys: Sequence[str] = TRAINING_IDENTITY) -> dict[str, tuple[Any, Any]]:
    """``option → (checkpoint's value, model's value)`` for each of ``keys`` that the checkpoint saved and that
    differs (a checkpoint written before an option existed has not saved it)."""
    return {key: (saved[key], model.hparams.get(key)) for key in keys
            if key in saved and saved[key] != model.hparams.get(key)}


def scheduler_kind(state: Iterable[str]) -> set[str]:
    """The keys of a scheduler's state that tell its kind (``T_max`` of cosine annealing, ``total_steps`` of one-cycle,
    ``milestones`` of a multi-step schedule, ...): not those every scheduler has, nor private ones."""
    return {key for key in state if not key.startswith("_") and key not in ("base_lrs", "last_epoch", "verbose")}


def made_scheduler_kind(model: L.LightningModule) -> Optional[set[str]]:
    """:func:`scheduler_kind` of the learning-rate scheduler ``model`` makes, built on a throwaway optimizer; None
    where it cannot be built without the trainer."""
    factory = model.scheduler_factory
    target = factory.func if isinstance(factory, functools.partial) else factory
    given = factory.keywords if isinstance(factory, functools.partial) else {}
    try:
        length = {key: 1 for key in ("T_max", "total_steps")
                  if key in inspect.signature(target).parameters and given.get(key) is None}
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        return scheduler_kind(factory(optimizer, **length).state_dict())
    except Exception:  # configure_optimizers reports a scheduler that cannot be made
        return None


def schedule_difference(checkpoint: dict[str, Any], model: L.LightningModule) -> Optional[str]:
    """How the learning-rate scheduler ``model`` makes differs from the one whose state the checkpoint saved, or
    None. Lightning would load the saved state into a scheduler of another kind without a word. Kinds are told apart
    by their state's keys; where one kind's keys hold the other's (a key added by a newer PyTorch), they count as
    the same."""
    saved = checkpoint.get("lr_schedulers") or []
    if len(saved) > 1 or not all(isinstance(state, dict) for state in saved):
        return None
    if getattr(model, "scheduler_factory", None) is None:
        none = "the checkpoint has a learning-rate scheduler, the config has none (model/scheduler=none)"
        return none if saved else None
    if not saved:
        return f"the checkpoint has no learning-rate scheduler, the config has {_scheduler_name(model)}"
    kind, made = scheduler_kind(saved[0]), made_scheduler_kind(model)
    if made is None or kind <= made or made <= kind:
        return None
    return (f"the checkpoint's learning-rate scheduler is of another kind (its state holds {', '.join(sorted(kind))}) "
            f"than the config's {_scheduler_name(model)}")


def _scheduler_name(model: L.LightningModule) -> str:
    factory = model.scheduler_factory
    target = factory.func if isinstance(factory, functools.partial) else factory
    return getattr(target, "__name__", str(target))


def check_resume_checkpoint(path: str, model: L.LightningModule, training: bool = True) -> None:
    """Fail early, and say why, when ``ckpt_path`` is missing, unreadable, of another model or of the same network
    trained otherwise (:data:`TRAINING_IDENTITY`) or, when training is to continue from it, holds the weights only or
    another kind of learning-rate schedule."""
    checkpoint = read_checkpoint(path, RESUME_FIX)
    if training and "optimizer_states" not in checkpoint:
        raise ValueError(f"ckpt_path={path} holds the weights only (no optimizer state, as a checkpoint saved with "
                         "save_weights_only), so training cannot continue from it; resume from a full checkpoint "
                         f"such as the run's last.ckpt, or explain it with abn-explain ckpt_path={path}")
    saved = checkpoint.get("hyper_parameters") or {}
    different = identity_differences(saved, model)
    if different:
        details = ", ".join(f"{key}: checkpoint {old!r} vs config {new!r}" for key, (old, new) in different.items())
        raise ValueError(f"ckpt_path={path} holds another model ({details}); "
                         "set the model options to the checkpoint's values or start without ckpt_path")
    trained = training_differences(saved, model, TRAINING_IDENTITY + (("scheduler_interval",) if training else ()))
    if trained:
        details = ", ".join(f"{key}: checkpoint {old!r} vs config {new!r}" for key, (old, new) in trained.items())
        overrides = " ".join(f"model.{key}={override_value(old)}" for key, (old, _) in trained.items())
        raise ValueError(f"ckpt_path={path} was trained with other model settings ({details}): a resumed run "
                         "continues the checkpoint's network, loss and schedule. Resume with the checkpoint's values "
                         f"({overrides}), or start a new run from its weights with init_from={path} instead of "
                         "ckpt_path")
    schedule = schedule_difference(checkpoint, model) if training else None
    if schedule:
        raise ValueError(f"ckpt_path={path}: {schedule}; the optimizer and the learning-rate schedule continue from "
                         "the checkpoint's saved state, which fits only the scheduler it was saved from. Resume with "
                         "the run's model/scheduler, or start a new run from its weights with "
                         f"init_from={path} instead of ckpt_path")


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
    refuse_non_finite(state, path, "init_from", "Start from")
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


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """The names of the tensors of ``state`` that hold a NaN or an infinity."""
    return [name for name, value in state.items()
            if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all())]


def refuse_non_finite(state: dict[str, Any], path: str, key: str, use: str) -> None:
    """A ValueError when weights of a checkpoint are nan or inf (a diverged training: nothing made from them means
    anything); the message names the run's other checkpoints. ``use``: what the user does with it (a verb)."""
    broken = non_finite_tensors(state)
    if broken:
        others = sorted(p.name for p in Path(path).parent.glob("*.ckpt") if p.name != Path(path).name)
        earlier = f" ({', '.join(others)} in {Path(path).parent})" if others else ""
        raise ValueError(f"{key}={path} holds weights that are not finite (NaN or infinity in {len(broken)} of "
                         f"{len(state)} tensors, the first {broken[0]}): the training that wrote it diverged. {use} "
                         f"an earlier checkpoint of the run{earlier} whose weights are still finite, or train again "
                         "with a lower learning rate (model.optimizer.lr)")


def load_network(path: str, device: torch.device) -> nn.Module:
    """The network of an ``abn-train`` checkpoint, in eval mode on ``device``; a clear error for anything else,
    including weights that are not finite (a diverged training: every map and score of it would be meaningless)."""
    saved = read_checkpoint(path, EXPLAIN_FIX)
    hparams = saved.get("hyper_parameters")
    if not hparams or "arch" not in hparams or not isinstance(saved.get("state_dict"), dict):
        raise ValueError(f"ckpt_path={path} holds no abn model settings (hyper_parameters with arch, head, num_classes) "
                         "or no weights; explain a checkpoint written by abn-train")
    refuse_non_finite(saved["state_dict"], path, "ckpt_path", "Explain")
    try:
        module = ABNModule.load_from_checkpoint(path, map_location=device, weights_only=True)
    except Exception as error:
        raise ValueError(f"ckpt_path={path}: its weights do not fit the model its settings describe "
                         f"(arch={hparams.get('arch')!r}, head={hparams.get('head')!r}): {error}") from error
    return module.net.to(device).eval()


def data_module_targets() -> frozenset[str]:
    """The ``_target_`` values that name one of this project's data modules: ``abn.data.<Class>`` as conf/data
    writes them, or the class's module path (``abn.data.shapes.ShapesDataModule``)."""
    from . import data

    classes = [getattr(data, name) for name in data.__all__]
    return frozenset(spelling for cls in classes if isinstance(cls, type) and issubclass(cls, L.LightningDataModule)
                     for spelling in (f"abn.data.{cls.__name__}", f"{cls.__module__}.{cls.__qualname__}"))


def _targets_in(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                yield value
            else:
                yield from _targets_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from _targets_in(item)


@functools.lru_cache(maxsize=1)
def configured_targets() -> frozenset[str]:
    """The data modules and every other ``_target_`` that this project's configs (``conf/``) name: the classes an
    ``abn-train`` run builds."""
    named = {target for file in config_dir().rglob("*.yaml")
             for target in _targets_in(OmegaConf.to_container(OmegaConf.load(file), resolve=False))}
    return data_module_targets() | named


def _resolver_names(tree: Any) -> Iterable[str]:
    if isinstance(tree, OmegaConfGrammarParser.InterpolationResolverContext):
        yield tree.resolverName().getText()
    for child in getattr(tree, "children", None) or []:
        yield from _resolver_names(child)


def builds_settings(text: str) -> bool:
    """Whether ``text`` holds an interpolation whose resolver is not one of :data:`PLAIN_RESOLVERS`: one such as
    ``${oc.create:{_target_: ...}}`` turns text into settings that Hydra's ``instantiate`` would call."""
    if "${" not in text:
        return False
    try:
        tree = grammar_parser.parse(text)
    except Exception:  # text OmegaConf cannot read: refused rather than guessed at
        return True
    return any(name not in PLAIN_RESOLVERS for name in _resolver_names(tree))


def chosen_calls(node: Any, where: str, targets: frozenset[str] = frozenset()) -> list[str]:
    """What in ``node`` (settings read from a file, found at key ``where``) would choose something for Hydra's
    ``instantiate`` to call: a ``_target_`` that is not one of ``targets``, any other of the :data:`CALL_KEYS`, or an
    interpolation with a resolver that can build such settings. Each as ``key=value``."""
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            at = f"{where}.{key}" if where else str(key)
            if key == "_target_" and isinstance(value, str) and value in targets:
                continue
            found += [f"{at}={value!r}"] if key in CALL_KEYS else chosen_calls(value, at, targets)
        return found
    if isinstance(node, (list, tuple)):
        return [call for index, item in enumerate(node) for call in chosen_calls(item, f"{where}[{index}]", targets)]
    if isinstance(node, str) and builds_settings(node):
        return [f"{where}={node!r}"]
    return []


def check_run_data(file: Path, data: Any) -> None:
    """Refuse a run's saved ``data`` section (``file``: where it was read) that would have Hydra call anything but
    one of this project's data modules: a file in a run folder holds settings, and is no place to choose code."""
    if not isinstance(data, dict):
        calls = [f"data={data!r}"]
    else:
        target = data.get("_target_")
        calls = [] if isinstance(target, str) and target in data_module_targets() else [f"data._target_={target!r}"]
        calls += chosen_calls({key: value for key, value in data.items() if key != "_target_"}, "data")
    if calls:
        raise ValueError(f"{file} sets {', '.join(calls)}: from a run folder's settings only one of this project's "
                         "data modules (abn.data.<Name>DataModule) is taken as data._target_, and nothing else that "
                         "Hydra would call (no other _target_, _partial_, _args_, or a resolver such as oc.create), so "
                         "no data was built from them. Choose the data with data=<name> and its options (data: "
                         f"{valid_names('data')}), e.g. data=shapes, or restore the run's settings")


def training_data_config(ckpt_path: str) -> DictConfig:
    """The ``data`` section of the run that wrote the checkpoint (``<run>/.hydra/config.yaml``), checked by
    :func:`check_run_data`."""
    checkpoint = Path(ckpt_path).resolve()
    for run_dir in (checkpoint.parent.parent, checkpoint.parent):
        saved = run_dir / ".hydra" / "config.yaml"
        if saved.is_file():
            config = OmegaConf.load(saved)
            if "data" not in config:
                raise ValueError(f"{saved} has no data section; choose the data with data=<name>")
            check_run_data(saved, OmegaConf.to_container(config, resolve=False)["data"])
            return config.data
    raise FileNotFoundError(f"found no training config for {ckpt_path} (looked for .hydra/config.yaml in "
                            f"{checkpoint.parent.parent} and {checkpoint.parent}); choose the data with data=<name> "
                            "and its options, e.g. data=shapes")
