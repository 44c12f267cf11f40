"""``abn-train ckpt_path=<run>/checkpoints/last.ckpt`` continues the run the checkpoint came from.

Before Hydra starts, :func:`resume_arguments` rewrites the command line: the run's own overrides (its
``.hydra/overrides.yaml``) come first, then the ones typed now (which win), then the run's folder as Hydra's run
directory and the folder the run was started from as ``paths.root_dir`` (so relative data paths mean what they
meant). Hydra is told not to write ``.hydra/`` yet: :func:`check_resumed_settings` first compares the new settings
with the saved ``.hydra/config.yaml`` and refuses changes a resumed run cannot honour, and only then
:func:`record_resumed_settings` keeps the old files under ``.hydra/previous/<time>/`` and writes the new ones.
"""

from __future__ import annotations

import datetime
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("abn")

SAVED_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
# restored from the checkpoint with the optimizer and scheduler states: a new value would be silently ignored
RESTORED_FROM_CHECKPOINT = ("model.optimizer", "model.scheduler", "model.scheduler_interval")
# what the number of optimizer steps of a run depends on
RUN_LENGTH = ("trainer.max_epochs", "trainer.max_steps", "trainer.accumulate_grad_batches",
              "trainer.limit_train_batches", "trainer.devices", "trainer.num_nodes", "data._target_",
              "data.batch_size", "data.train_size", "data.val_size")
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
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))
    typed_keys = {o.key_or_group for o in given}
    kept = [text for text, override in zip(saved, parser.parse_overrides(saved))
            if override.key_or_group not in typed_keys and override.key_or_group != "ckpt_path"]
    extra = []
    if "paths.root_dir" not in typed_keys and not any(text.startswith("paths.root_dir=") for text in kept):
        hydra_file = run_dir / ".hydra" / "hydra.yaml"
        started_in = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.cwd") if hydra_file.is_file() else None
        if started_in:
            extra.append(f"paths.root_dir={quoted(str(started_in))}")
    return [*kept, *argv, *extra, f"hydra.run.dir={quoted(str(run_dir))}", "hydra.output_subdir=null"]


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


def changed_settings(previous: DictConfig, current: DictConfig) -> dict[str, tuple[Any, Any]]:
    """``key → (saved value, new value)`` for every setting that differs (interpolations compared as written)."""
    old = _flat(OmegaConf.to_container(previous, resolve=False))
    new = _flat(OmegaConf.to_container(current, resolve=False))
    changed = {}
    for key in sorted(set(old) | set(new)):
        if key.split(".")[0] in NOT_COMPARED or old.get(key) == new.get(key):
            continue
        changed[key] = (old.get(key), new.get(key))
    return changed


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def derives_run_length(cfg: DictConfig) -> bool:
    scheduler = OmegaConf.select(cfg, "model.scheduler")
    if not scheduler:
        return False
    length_key = LENGTH_KEYS.get(scheduler.get("_target_"))
    return length_key is not None and scheduler.get(length_key) is None


def check_resumed_settings(previous: DictConfig, current: DictConfig, run_dir: Path) -> dict[str, tuple[Any, Any]]:
    """Refuse the changes a resumed run cannot honour; return (and log) the others."""
    changed = changed_settings(previous, current)
    refused = {key: values for key, values in changed.items() if _under(key, RESTORED_FROM_CHECKPOINT)}
    reason = ("the optimizer and the learning-rate schedule continue from the checkpoint's saved state, so a new value "
              "would be ignored")
    if not refused and derives_run_length(previous):
        refused = {key: values for key, values in changed.items() if _under(key, RUN_LENGTH)}
        reason = (f"they change the number of training steps, but the learning-rate schedule "
                  f"({previous.model.scheduler._target_.rsplit('.', 1)[-1]}) was sized to the run's length when it "
                  "started and continues from the checkpoint")
    if refused:
        listed = ", ".join(f"{key}: {old!r} → {new!r}" for key, (old, new) in refused.items())
        raise ValueError(
            f"cannot resume {run_dir} with {listed}: {reason}. Resume without these overrides (the run's own settings "
            "are used), or start a new run (a new folder) without ckpt_path"
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
