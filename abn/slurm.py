"""SLURM jobs started by ``abn-train -m hydra/launcher=slurm`` (hydra-submitit-launcher, ``conf/hydra/launcher/slurm.yaml``).

One mechanism requeues a job: submitit's. SLURM warns a job with SIGUSR2 before its time limit (``--signal``, set by
submitit); :class:`abn.interrupt.StopOnSignal` saves ``checkpoints/last.ckpt`` at the end of the batch under way and
then hands the signal on to submitit, which counts the job's time-outs (``max_num_timeout``) and requeues it.
Lightning's own SLURM requeue (SIGUSR1, a checkpoint written wherever the step is when the signal comes, beside the
run's checkpoints) is switched off in these jobs (:func:`trainer_arguments`).

A requeued job runs the same pickled Hydra job again: the sweep folder comes from the resolved config submitit
pickled, so the job finds its own run folder, and :func:`requeued_checkpoint` gives the ``last.ckpt`` to continue from.

The resolvers ``${abn.slurm_tasks:${trainer.devices}}`` and ``${abn.slurm_gpus:${trainer.accelerator},${trainer.devices}}``
size the jobs from the trainer's settings; they are registered when this module is imported (by ``abn.train``).
"""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

GPU_ACCELERATORS = ("gpu", "cuda")


def submitit_job() -> bool:
    """Whether this process is a SLURM job that submitit started."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def restart_count() -> int:
    """How often SLURM has started this job again (requeued, pre-empted, a failed node); 0 outside SLURM."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def restarted_job() -> bool:
    """Whether this is a submitit job that SLURM has started again: its run folder is the one an earlier start made."""
    return submitit_job() and restart_count() > 0


def requeue_signal() -> Optional[signal.Signals]:
    """The signal on which submitit requeues its job (``SUBMITIT_PREEMPT_SIGNAL``, SIGUSR2 by default); None outside
    a submitit job."""
    if not submitit_job():
        return None
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal.Signals, f"SIG{name}", None)


def requeued_checkpoint(run_dir: Path) -> Optional[Path]:
    """``<run>/checkpoints/last.ckpt`` where this submitit job has been started again and an earlier start saved it."""
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    return checkpoint if restarted_job() and checkpoint.is_file() else None


def trainer_arguments(trainer_cfg: Any) -> dict[str, Any]:
    """In a submitit job, ``plugins``: the configured ones and Lightning's SLURM environment without its auto-requeue
    (submitit requeues); nothing elsewhere, or where the config chooses a cluster environment itself."""
    if not submitit_job():
        return {}
    from hydra.utils import instantiate
    from lightning.fabric.plugins.environments import ClusterEnvironment
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    plugins = instantiate(trainer_cfg.get("plugins") or [], _convert_="all")
    if any(isinstance(plugin, ClusterEnvironment) for plugin in plugins):
        return {}
    return {"plugins": [*plugins, SLURMEnvironment(auto_requeue=False)]}


def missing_launcher(arguments: list[str]) -> Optional[str]:
    """What to install, where the command line asks for ``hydra/launcher=slurm`` and hydra-submitit-launcher is missing
    (Hydra would only say that it cannot find ``submitit_slurm``); None otherwise."""
    if "hydra/launcher=slurm" not in (argument.replace(" ", "") for argument in arguments):
        return None
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
        return None
    return ("hydra/launcher=slurm submits the jobs through hydra-submitit-launcher, which is not installed: "
            "pip install 'abn[slurm]' (or pip install hydra-submitit-launcher)")


def tasks_per_node(devices: Any) -> int:
    """One SLURM task per device (Lightning's DDP takes its ranks from them); 1 for ``devices=auto`` or a list."""
    return devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0 else 1


def gpus_per_node(accelerator: Any, devices: Any) -> Optional[int]:
    """The devices as GPUs when the trainer runs on GPUs, else None (no GPU requested)."""
    return tasks_per_node(devices) if str(accelerator).lower() in GPU_ACCELERATORS else None


OmegaConf.register_new_resolver("abn.slurm_tasks", tasks_per_node, replace=True)
OmegaConf.register_new_resolver("abn.slurm_gpus", gpus_per_node, replace=True)
