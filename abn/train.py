"""``abn-train``: train an ABN (or its baseline / CAM twin) from the Hydra config in ``conf/``.

    abn-train                                   # the embedded shapes data set, CPU, about a minute
    abn-train -m model.head=baseline,cam,abn seed=1,2
    abn-train experiment=fashion_mnist
    abn-train ckpt_path=logs/train/runs/<date>/checkpoints/last.ckpt   # continue that run, in its folder
    abn-train init_from=logs/train/runs/<date>/checkpoints/last.ckpt   # a new run from that run's weights
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelSummary, ProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .callbacks import DestroyProcessGroupAtExit
from .checkpoint_io import latest_checkpoint
from .checkpoints import check_resume_checkpoint, load_initial_weights
from .cli import reported_errors, route_library_logs_to_run_log
from .config import config_dir
from .data.facts import DataFacts, adopt_data_facts
from .hparams_search import search_command_problem, search_trial
from .interrupt import StopOnSignal
from .speed import apply_fast_settings, training_device
from .resume import check_resumed_settings, is_resumed_in_place, record_resumed_settings, resume_arguments
from .slurm import missing_launcher, requeued_checkpoint, restart_count, restarted_job, trainer_arguments

log = logging.getLogger("abn")

HPARAM_SECTIONS = ("model", "data", "trainer")
SKIPPED_HPARAMS = ("_target_", "_partial_", "root", "search_dirs", "num_workers", "pin_memory", "default_root_dir")


def instantiate_group(group: Optional[DictConfig]) -> list[Any]:
    """Build every entry of a group such as ``callbacks`` or ``logger`` (entries set to null are skipped)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]


def flat_settings(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"optimizer": {"lr": 0.1}}}`` as ``{"model.optimizer.lr": 0.1}``, without the SKIPPED_HPARAMS."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if key in SKIPPED_HPARAMS:
            continue
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def hyperparameters(cfg: DictConfig, facts: DataFacts) -> dict[str, Any]:
    """``seed`` and the ``model``, ``data`` and ``trainer`` settings as the run used them (with the data's class count,
    task and arch) for TensorBoard's HPARAMS tab, flat as ``section.key``; the logger writes values that are not
    numbers, strings or booleans as text."""
    sections = {name: OmegaConf.to_container(cfg[name], resolve=True)
                for name in HPARAM_SECTIONS if isinstance(cfg.get(name), DictConfig)}
    return flat_settings({"seed": cfg.get("seed"), **facts.settle(sections)})


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# settings whose wrong type or value would fail deep inside Lightning or PyTorch with a raw TypeError, or not at all:
# key → (what it must be, an example, the test)
CHECKED_VALUES = {
    "seed": ("an integer or null", "seed=0", lambda v: v is None or _integer(v)),
    "data.batch_size": ("a positive integer", "data.batch_size=64", lambda v: _integer(v) and v > 0),
    "data.num_workers": ("an integer ≥ 0", "data.num_workers=2", lambda v: _integer(v) and v >= 0),
    "trainer.max_epochs": ("a positive integer", "trainer.max_epochs=30", lambda v: v is None or _integer(v) and v > 0),
    "trainer.max_steps": ("an integer, -1 for no limit", "trainer.max_steps=-1", lambda v: _integer(v) and v >= -1),
    "model.optimizer.lr": ("a number > 0", "model.optimizer.lr=0.1", lambda v: _number(v) and v > 0),
    "model.optimizer.weight_decay": ("a number ≥ 0", "model.optimizer.weight_decay=1e-4", lambda v: _number(v) and v >= 0),
    "model.optimizer.momentum": ("a number ≥ 0", "model.optimizer.momentum=0.9", lambda v: _number(v) and v >= 0),
}


def check_values(cfg: DictConfig) -> None:
    """One clear message for a setting of the wrong type or range (``data.batch_size=abc``, ``trainer.max_epochs=0``)."""
    for key, (meaning, example, valid) in CHECKED_VALUES.items():
        value = OmegaConf.select(cfg, key, default="<absent>")
        if value == "<absent>" or valid(value):
            continue
        advice = ""
        if key == "trainer.max_epochs" and value in (0, -1):
            advice = (" (0 trains nothing and -1 never stops; to test a checkpoint without training give "
                      "ckpt_path=<run>/checkpoints/last.ckpt train=false, for a run of a set length trainer.max_steps)")
            if value == -1 and _integer(OmegaConf.select(cfg, "trainer.max_steps")) and cfg.trainer.max_steps > 0:
                continue  # -1 epochs with a step limit: Lightning stops at max_steps
        raise ValueError(f"{key}={value!r}: must be {meaning}, e.g. {example}{advice}")


def check_start_point(cfg: DictConfig, previous: Optional[DictConfig] = None) -> None:
    """``init_from`` starts a new run from a checkpoint's weights, ``ckpt_path`` continues a run: not both, except
    when continuing (``previous``: its saved config) a run that was itself started with that ``init_from``."""
    init_from, ckpt_path = cfg.get("init_from"), cfg.get("ckpt_path")
    if not init_from or not ckpt_path or (previous is not None and previous.get("init_from") == init_from):
        return
    started = "" if previous is None else f" (that run started from {previous.get('init_from') or 'fresh weights'})"
    raise ValueError(f"init_from={init_from} starts a new run from a checkpoint's weights (a new folder, a fresh "
                     f"optimizer and schedule, epoch 0), ckpt_path={ckpt_path} continues a run where it stopped"
                     f"{started}: give only one of them")


def seed_run(seed: Optional[int]) -> None:
    """Seed every generator with ``seed``, which Lightning also passes on to spawned processes (``PL_GLOBAL_SEED``,
    read by abn.data.resumable); without a seed, the one an earlier run of this process left there is removed, so a
    job of a sweep with ``seed=null`` is not replayed with its predecessor's order and draws."""
    if seed is not None:
        L.seed_everything(seed, workers=True)
    else:
        os.environ.pop("PL_GLOBAL_SEED", None)


def settle_sync_batchnorm(trainer_cfg: DictConfig) -> None:
    """``trainer.sync_batchnorm=auto`` (``trainer=ddp``) becomes true where the run trains on CUDA GPUs and false
    elsewhere; ``true`` off GPUs is refused here rather than by PyTorch inside every process."""
    on_gpus = training_device(str(trainer_cfg.get("accelerator"))).type == "cuda" and torch.cuda.is_available()
    if trainer_cfg.get("sync_batchnorm") == "auto":
        trainer_cfg.sync_batchnorm = on_gpus
    elif trainer_cfg.get("sync_batchnorm") and not on_gpus:
        raise ValueError("trainer.sync_batchnorm=true needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU version), "
                         "and this run trains on the CPU: set trainer.sync_batchnorm=auto (synced on GPUs only) or "
                         "false")


def plain_console_callbacks(callbacks: list, trainer_cfg: DictConfig) -> list:
    """The tqdm progress bar and the plain model summary, unless the config chose others: Lightning switches to its
    rich versions wherever the ``rich`` package happens to be installed (optuna's dependencies bring it), which
    changes what a run prints and writes to logs of background runs."""
    added = []
    if trainer_cfg.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        added.append(TQDMProgressBar())
    if trainer_cfg.get("enable_model_summary", True) and not any(isinstance(c, ModelSummary) for c in callbacks):
        added.append(ModelSummary())
    return added


def train(cfg: DictConfig, resumed: bool = False) -> dict[str, float]:
    """Fit, then test the last-epoch weights; returns the final metrics (``val/acc``, ``test/acc``, …).

    ``init_from`` (without ``ckpt_path``) starts the network from a checkpoint's weights; ``resumed``: the run
    continues in its own folder (its ``init_from`` was checked by :func:`run`, and ``ckpt_path`` restores all)."""
    check_values(cfg)
    if not resumed:
        check_start_point(cfg)
    seed_run(cfg.get("seed"))
    settle_sync_batchnorm(cfg.trainer)
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    facts = adopt_data_facts(cfg, datamodule)
    model: L.LightningModule = instantiate(cfg.model, **facts.model_arguments())
    apply_fast_settings(cfg, model, datamodule)  # trainer.precision and model.channels_last where they are auto
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers: list[Logger] = instantiate_group(cfg.get("logger"))
    if not loggers:  # logger=none: nothing to record learning rates to
        callbacks = [callback for callback in callbacks if not isinstance(callback, LearningRateMonitor)]
    stopper = StopOnSignal()
    # the bar last, where Lightning puts its own: under DDP it computes the epoch's metrics (a collective of
    # torchmetrics) on rank 0 alone, which pairs with the other ranks' computing them right after the callbacks; a
    # callback with a collective of its own after the bar (the stopper) would pair with it instead and hang the run
    callbacks += [stopper, DestroyProcessGroupAtExit(), *plain_console_callbacks(callbacks, cfg.trainer)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                     **trainer_arguments(cfg.trainer))

    if cfg.get("ckpt_path"):
        check_resume_checkpoint(cfg.ckpt_path, model, training=cfg.get("train", True))
        if cfg.get("seed") is not None and trainer.world_size == 1:
            # the training loader continues a resumed epoch after the batches already trained (abn.data.resumable),
            # which Lightning cannot see
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
    elif cfg.get("init_from"):
        load_initial_weights(str(cfg.init_from), model, getattr(datamodule, "classes", ()))
        log.info("Starting a new run from the weights of %s (a fresh optimizer and schedule, epoch 0)", cfg.init_from)
    with stopper.listening(trainer):
        if cfg.get("train", True):
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = final_metrics(trainer)
        if cfg.get("test", True):
            # the last epoch's weights (no selection on the test set): the trained model, or the checkpoint's
            trainer.test(model, datamodule=datamodule, ckpt_path=None if cfg.get("train", True) else cfg.get("ckpt_path"))
            metrics.update(final_metrics(trainer))

    hp_metrics = {f"hp/{name.replace('/', '_')}": value for name, value in metrics.items()
                  if name.split("/")[-1] in ("acc", "acc5", "acc_att", "loss") and not math.isnan(value)}
    for logger in loggers:
        logger.log_hyperparams(hyperparameters(cfg, facts), metrics=hp_metrics)
        logger.finalize("success")
    print_summary(trainer, loggers, metrics, cfg.get("init_from") if not cfg.get("ckpt_path") else None)
    return metrics


@rank_zero_only
def print_summary(trainer: L.Trainer, loggers: list[Logger], metrics: dict[str, float],
                  started_from: Optional[str] = None) -> None:
    lines = ["", "Training finished."]
    if started_from:
        lines.append(f"  started from the weights of {started_from}")
    for split in ("test", "val"):
        if f"{split}/acc" in metrics:
            lines.append(f"  {split} accuracy, perception branch: {100 * metrics[f'{split}/acc']:.2f} %")
            if f"{split}/acc_att" in metrics:
                lines.append(f"  {split} accuracy, attention branch:  {100 * metrics[f'{split}/acc_att']:.2f} %")
            break
    checkpoint = latest_checkpoint(trainer)  # the last epoch's (or step's): what a resumed run continues from
    if checkpoint:
        lines.append(f"  checkpoint:       {checkpoint}")
        lines.append(f"  resume it with:   abn-train ckpt_path={checkpoint}")
    best = trainer.checkpoint_callback
    best_path = getattr(best, "best_model_path", "") if getattr(best, "monitor", None) else ""
    if best_path and Path(best_path).is_file() and best_path != checkpoint:
        lines.append(f"  {f'best {best.monitor}:':<17} {best_path}")
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            log_dir = Path(logger.log_dir)
            lines.append(f"  TensorBoard logs: {log_dir}")
            lines.append(f"  open them with:   tensorboard --logdir {log_dir.parent} --samples_per_plugin images=100")
    log.info("\n".join(lines))


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
@search_trial
def run(cfg: DictConfig) -> Optional[float]:
    """One Hydra job: a run in its own folder, or the continuation of the run a checkpoint came from."""
    route_library_logs_to_run_log()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    resumed = is_resumed_in_place(cfg, run_dir, hydra_cfg.output_subdir)
    with reported_errors(run_dir, fresh_folder=not resumed and not restarted_job()):
        if restarted_job():  # a SLURM job started again (requeued): it continues from the checkpoint it saved
            checkpoint = requeued_checkpoint(run_dir)
            log.info("SLURM started this job again (restart %d): %s", restart_count(),
                     f"continuing the run in {run_dir} from {checkpoint}" if checkpoint else
                     f"no checkpoint saved yet in {run_dir}, so training starts over")
            if checkpoint:
                cfg.ckpt_path = str(checkpoint)
                resumed = True
        elif resumed:
            log.info("Resuming the run in %s from %s", run_dir, cfg.ckpt_path)
            previous = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
            check_start_point(cfg, previous)
            check_resumed_settings(previous, cfg, run_dir)
            record_resumed_settings(run_dir, cfg, hydra_cfg)
        metrics = train(cfg, resumed=resumed)
    return metrics.get(cfg.get("optimized_metric", ""))


def main() -> None:
    """``abn-train``: a checkpoint of an earlier run (``ckpt_path=``) continues that run with its settings."""
    try:
        sys.argv[1:] = resume_arguments(sys.argv[1:])
    except Exception as error:  # an unreadable .hydra/ beside the checkpoint: say so, no traceback
        sys.exit(f"cannot continue the run of this checkpoint: {type(error).__name__}: {error}\n"
                 "Fix or remove the run's .hydra/ folder, or copy the checkpoint elsewhere to resume it in a new folder.")
    problem = search_command_problem(sys.argv[1:])
    if problem:
        sys.exit(problem)
    missing = missing_launcher(sys.argv[1:])
    if missing:
        sys.exit(missing)
    run()


if __name__ == "__main__":
    main()
