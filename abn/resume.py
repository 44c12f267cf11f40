"""``abn-train ckpt_path=<run>/checkpoints/last.ckpt`` continues the run the checkpoint came from.

Before Hydra starts, :func:`resume_arguments` rewrites the command line: the run's own overrides (its
``.hydra/overrides.yaml``) come first, then the ones typed now (which win), then the run's folder as Hydra's run
directory and the folder the run was started from as ``paths.root_dir`` (so relative data paths mean what they
meant). Hydra is told not to write ``.hydra/`` yet: :func:`check_resumed_settings` first compares the new settings
with the saved ``.hydra/config.yaml`` and refuses changes a resumed run cannot honour, and only then
:func:`record_resumed_settings` keeps the old files under ``.hydra/previous/<time>/`` and writes the new ones.

The saved overrides are replayed only where they cannot choose what gets called (:func:`check_saved_overrides`):
a run folder holds settings, and a file in it is no place for code. What the user types stays their own choice.
"""

from __future__ import annotations

import datetime
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from .checkpoints import MODEL_IDENTITY, TRAINING_IDENTITY, builds_settings, chosen_calls, configured_targets
from .config import config_dir
from .models.network import resolve_attention_mode

log = logging.getLogger("abn")

SAVED_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
# restored from the checkpoint with the optimizer and scheduler states: a new value would be silently ignored
RESTORED_FROM_CHECKPOINT = ("model.optimizer", "model.scheduler", "model.scheduler_interval")
# what the number of optimizer steps of a run depends on
RUN_LENGTH = ("trainer.max_epochs", "trainer.max_steps", "trainer.accumulate_grad_batches",
              "trainer.limit_train_batches", "trainer.devices", "trainer.num_nodes", "data._target_",
              "data.batch_size", "data.train_size", "data.val_size", "data.use_extra")
# what defines the network and the loss it is trained on: the checkpoint's weights and optimizer state continue them
NETWORK_DEFINING = (*(f"model.{key}" for key in (*MODEL_IDENTITY, *TRAINING_IDENTITY)), "data.num_classes",
                    "data.in_chans")
# schedulers whose length ``ABNModule`` fills with the run's length when the config leaves it out
LENGTH_KEYS = {"torch.optim.lr_scheduler.OneCycleLR": "total_steps", "torch.optim.lr_scheduler.CosineAnnealingLR": "T_max"}
NOT_COMPARED = ("ckpt_path", "paths")


def run_folder_of(checkpoint: Path) -> Optional[Path]:
    """The ``abn-train`` run folder that holds ``checkpoint`` (``<run>/checkpoints/x.ckpt``), or None."""
    for folder in (checkpoint.parent.parent, checkpoint.parent):
        if all((folder / ".hydra" / name).is_file() for name in ("config.yaml", "overrides.yaml")):
            return folder
    return None


def quoted(value: str) -> str:
    """A value for Hydra's override grammar whatever characters it holds."""
    return "'" + value.replace("'", "\\'") + "'"


def resume_arguments(argv: list[str]) -> list[str]:
    """The command line that continues the checkpoint's run; ``argv`` unchanged when it does not resume a run
    (no ``ckpt_path``, a multirun or another Hydra flag, a checkpoint outside a run folder, or one that is missing:
    the training code reports that)."""
    if any(argument.startswith("-") for argument in argv):
        return argv
    parser = OverridesParser.create()
    try:
        given = parser.parse_overrides(argv)
    except Exception:  # Hydra reports the syntax error itself
        return argv
    checkpoints = [o.value() for o in given if o.key_or_group == "ckpt_path" and o.value() not in (None, "")]
    if not checkpoints:
        return argv
    checkpoint = Path(str(checkpoints[-1])).expanduser().resolve()
    run_dir = run_folder_of(checkpoint) if checkpoint.is_file() else None
    if run_dir is None:
        return argv
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    saved = OmegaConf.to_container(OmegaConf.load(overrides_file))
    typed_keys = {o.key_or_group for o in given}
    kept = [(text, override) for text, override in zip(saved, parser.parse_overrides(saved))
            if override.key_or_group not in typed_keys and override.key_or_group != "ckpt_path"]
    check_saved_overrides(overrides_file, kept)
    extra = []
    if "paths.root_dir" not in typed_keys and not any(o.key_or_group == "paths.root_dir" for _, o in kept):
        hydra_file = run_dir / ".hydra" / "hydra.yaml"
        started_in = saved_start_folder(hydra_file) if hydra_file.is_file() else None
        if isinstance(started_in, str) and builds_settings(started_in):
            raise ValueError(f"{hydra_file} gives hydra.runtime.cwd as {started_in!r}, an interpolation that could "
                             "build settings for Hydra to call, so it was not used; resume with paths.root_dir=<the "
                             "folder the run was started from>, or restore the file")
        if started_in:
            extra.append(f"paths.root_dir={quoted(str(started_in))}")
    return [*(text for text, _ in kept), *argv, *extra, f"hydra.run.dir={quoted(str(run_dir))}",
            "hydra.output_subdir=null"]


def saved_start_folder(hydra_file: Path) -> Any:
    """``hydra.runtime.cwd`` of a run's ``hydra.yaml`` as written (an interpolation is not resolved)."""
    node: Any = OmegaConf.to_container(OmegaConf.load(hydra_file), resolve=False)
    for key in ("hydra", "runtime", "cwd"):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def group_options(group: str) -> Optional[list[str]]:
    """The options of one of this project's config groups (``data``, ``model/scheduler``), or None for a key that
    names no group."""
    folder = config_dir() / group
    return sorted(path.stem for path in folder.glob("*.yaml")) if folder.is_dir() else None


def _as_tree(key: str, value: Any) -> dict[str, Any]:
    """``model.optimizer._target_``, ``x`` as ``{"model": {"optimizer": {"_target_": "x"}}}``."""
    tree: Any = value
    for part in reversed(key.split(".")):
        tree = {part: tree}
    return tree


def refusal(override: Override) -> Optional[str]:
    """Why a saved override may not be replayed, as the end of a sentence, or None. ``abn-train`` saves plain
    settings and config options: Hydra's own settings (``hydra.*``, ``hydra/...``) go to ``hydra.yaml``, never to
    ``overrides.yaml``, and no run needs a saved ``_target_`` other than the classes this project's configs name."""
    key = override.key_or_group
    if key == "hydra" or key.startswith(("hydra.", "hydra/")):
        return "which changes Hydra's own settings (abn-train never saves those among a run's overrides)"
    if override.package is not None:
        return "which moves a config group to another place (@), as abn-train never does"
    if override.is_sweep_override():
        return "a sweep, where a run saves one value per setting"
    options = group_options(key) if "." not in key else None
    if options is not None or "/" in key:
        chosen = override.value() if isinstance(override.value(), list) else [override.value()]
        wrong = [value for value in chosen if value is not None and value not in (options or [])]
        if wrong:
            return (f"which chooses {wrong[0]!r}, not one of this project's {key} configs"
                    f"{' (' + ', '.join(options) + ')' if options else ''}")
        return None
    adds = override.is_add() or override.is_force_add()
    calls = chosen_calls(_as_tree(key, override.value()), "", frozenset() if adds else configured_targets())
    if calls:
        if adds:
            return f"which adds {', '.join(calls)}: a saved override may not add anything for Hydra to call"
        return (f"which sets {', '.join(calls)}: a saved override may set a _target_ only to a class this project's "
                "configs name, and no other key Hydra calls by (_partial_, _args_, ...) nor a resolver that can build "
                "such settings (such as oc.create)")
    return None


def check_saved_overrides(file: Path, overrides: list[tuple[str, Override]]) -> None:
    """Refuse to replay a run's saved overrides (``file``) when one of them would choose what gets called (see
    :func:`refusal`); nothing is run or written."""
    for text, override in overrides:
        why = refusal(override)
        if why:
            raise ValueError(
                f"{file} holds the override {text!r}, {why}. A resumed run replays its saved overrides, and a file in "
                "a run folder may not choose what abn-train calls, so nothing was run. If you gave that override "
                "yourself, type it again with ckpt_path= (what you type replaces the saved one); otherwise remove "
                f"the line from {file}"
            )


def is_resumed_in_place(cfg: DictConfig, output_dir: Path, output_subdir: Optional[str]) -> bool:
    """Whether this Hydra run continues an earlier run in its own folder (as :func:`resume_arguments` arranges)."""
    if not cfg.get("ckpt_path") or output_subdir is not None:
        return False
    checkpoint = Path(str(cfg.ckpt_path)).expanduser().resolve()
    return run_folder_of(checkpoint) == output_dir.resolve()


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flat(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def group_defaults() -> dict[str, Any]:
    """The settings of each config group's default option (``conf/<group>/default.yaml``), flat and as written
    (``trainer.max_steps`` → -1): what a run saved before a setting existed ran with."""
    defaults: dict[str, Any] = {}
    for file in sorted(config_dir().glob("*/default.yaml")):
        defaults.update(_flat(OmegaConf.to_container(OmegaConf.load(file), resolve=False), f"{file.parent.name}."))
    return defaults


def changed_settings(previous: DictConfig, current: DictConfig) -> dict[str, tuple[Any, Any]]:
    """``key → (saved value, new value)`` for every setting that differs (interpolations compared as written). A
    setting the saved config lacks counts with its default (:func:`group_defaults`): the run was saved before it
    existed, and ran as its default does."""
    old = _flat(OmegaConf.to_container(previous, resolve=False))
    new = _flat(OmegaConf.to_container(current, resolve=False))
    defaults = group_defaults()
    changed = {}
    for key in sorted(set(old) | set(new)):
        before = old[key] if key in old else defaults.get(key)
        if key.split(".")[0] in NOT_COMPARED or before == new.get(key):
            continue
        changed[key] = (before, new.get(key))
    return changed


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def derives_run_length(cfg: DictConfig) -> bool:
    scheduler = OmegaConf.select(cfg, "model.scheduler")
    if not scheduler:
        return False
    length_key = LENGTH_KEYS.get(scheduler.get("_target_"))
    return length_key is not None and scheduler.get(length_key) is None


def _attention_mode(cfg: DictConfig) -> Any:
    head, mode = (OmegaConf.select(cfg, f"model.{key}", throw_on_resolution_failure=False)
                  for key in ("head", "attention_mode"))
    return resolve_attention_mode(head, mode)


def network_changes(changed: dict[str, tuple[Any, Any]], previous: DictConfig,
                    current: DictConfig) -> dict[str, tuple[Any, Any]]:
    """The changes to :data:`NETWORK_DEFINING` settings, ``model.attention_mode`` as the head resolves it (null is
    the head's own mode)."""
    network = {key: values for key, values in changed.items() if _under(key, NETWORK_DEFINING)}
    if "model.attention_mode" in network:
        old, new = _attention_mode(previous), _attention_mode(current)
        if old == new:
            del network["model.attention_mode"]
        else:
            network["model.attention_mode"] = (old, new)
    return network


def check_resumed_settings(previous: DictConfig, current: DictConfig, run_dir: Path) -> dict[str, tuple[Any, Any]]:
    """Refuse the changes a resumed run cannot honour; return (and log) the others."""
    changed = changed_settings(previous, current)
    refused = network_changes(changed, previous, current)
    reason = ("they define the network or the loss it is trained on, and the run continues the checkpoint's "
              "weights and optimizer state, trained with the old values")
    fresh_run = (f"start a new run from the checkpoint's weights with init_from={current.get('ckpt_path')} instead "
                 "of ckpt_path (a new folder, a fresh optimizer and schedule)")
    if not refused:
        refused = {key: values for key, values in changed.items() if _under(key, RESTORED_FROM_CHECKPOINT)}
        reason = ("the optimizer and the learning-rate schedule continue from the checkpoint's saved state, so a new "
                  "value would be ignored")
        fresh_run = "start a new run (a new folder) without ckpt_path"
    if not refused and derives_run_length(previous):
        refused = {key: values for key, values in changed.items() if _under(key, RUN_LENGTH)}
        reason = (f"they change the number of training steps, but the learning-rate schedule "
                  f"({previous.model.scheduler._target_.rsplit('.', 1)[-1]}) was sized to the run's length when it "
                  "started and continues from the checkpoint")
    if refused:
        listed = ", ".join(f"{key}: {old!r} → {new!r}" for key, (old, new) in refused.items())
        raise ValueError(
            f"cannot resume {run_dir} with {listed}: {reason}. Resume without these overrides (the run's own settings "
            f"are used), or {fresh_run}"
        )
    if changed:
        log.info("Resuming with changed settings: %s",
                 ", ".join(f"{key}: {old!r} → {new!r}" for key, (old, new) in changed.items()))
    return changed


def record_resumed_settings(run_dir: Path, cfg: DictConfig, hydra_cfg: DictConfig) -> Path:
    """Keep the run's earlier ``.hydra`` files under ``.hydra/previous/<time>/`` and write the current ones."""
    saved_dir = run_dir / ".hydra"
    archive = saved_dir / "previous" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    archive.mkdir(parents=True)
    for name in SAVED_FILES:
        if (saved_dir / name).is_file():
            shutil.copy2(saved_dir / name, archive / name)
    OmegaConf.save(cfg, saved_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg, resolve=False)}), saved_dir / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), saved_dir / "overrides.yaml")
    return archive
