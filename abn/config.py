"""Where the Hydra configs are (packaged as ``abn/conf`` in a wheel, ``conf/`` beside ``abn/`` in a checkout), and
the OmegaConf resolvers they use.

The resolvers are registered when this module is imported, which both entry points do before Hydra composes:

* ``${abn.cwd:}``: the folder the command was started from. Unlike ``${hydra:runtime.cwd}`` it also resolves
  where Hydra has no runtime config yet (``hydra.sweep.dir`` of a multirun is resolved before any job starts).
* ``${abn.workers:N}``: N data-loader workers, or the CPU cores this process may use if there are fewer.
* ``${abn.names:archs}`` (``heads``, or a config group such as ``data``): the valid names, for ``--help``.
* ``${abn.job_folder:${hydra.job.num},${hydra.job.override_dirname}}``: a multirun job's folder name that a shell and Hydra's
  override grammar both take unquoted, and short (see :func:`job_folder_name`).
* ``${abn.new_folder:${paths.log_dir}/…/${now:%Y-%m-%d_%H-%M-%S}}``: that folder, made now and this run's own; a
  second run started in the same second gets ``…_2`` (see :func:`claim_new_folder`).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from omegaconf import OmegaConf

# a job folder name longer than this is cut and ends in a hash of the full overrides (file names stop at 255 bytes)
MAX_JOB_FOLDER = 64


def config_dir() -> Path:
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"the Hydra configs (train.yaml) are neither in {package / 'conf'} nor in {package.parent / 'conf'}; "
        "reinstall the package (pip install .) or run from a checkout of the repository"
    )


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one, e.g. under SLURM or taskset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def at_most_cores(workers: int) -> int:
    return min(int(workers), available_cores())


def job_folder_name(job_number: int, override_dirname: str) -> str:
    """Job 0 of ``model.head=baseline,trainer.max_epochs=1`` → ``0_model.head-baseline_trainer.max_epochs-1``.

    Hydra joins a job's overrides with ``=`` and ``,``, which its own grammar refuses in an unquoted value, so a
    checkpoint path under such a folder could not be passed back as ``ckpt_path=``. Here ``=`` becomes ``-``, the
    separator ``_``, ``/`` (of ``model/scheduler=…``) ``.``, and anything else that is not a letter, a digit or one of
    ``._+-`` becomes ``-``. A name longer than ``MAX_JOB_FOLDER`` is cut and ends in 8 hex digits of a hash of the
    whole, so that two long sweeps' folders still differ; the job's full overrides stay in ``.hydra/overrides.yaml``.
    """
    name = override_dirname.replace("=", "-").replace(",", "_").replace("/", ".")
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", name)
    name = re.sub(r"-{2,}", "-", name).strip("-_.")
    if len(name) > MAX_JOB_FOLDER:
        digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:8]
        name = f"{name[: MAX_JOB_FOLDER - 9].rstrip('-_.')}_{digest}"
    return f"{job_number}_{name}" if name else str(job_number)


def claim_new_folder(path: str) -> str:
    """Make the folder ``path`` and return it; if it exists (another run started in the same second), make and return
    ``path_2``, ``path_3``, … instead. ``os.mkdir`` either makes a folder or fails, so two processes never get the
    same one; ``_2`` sorts after ``path`` and before the next second's folder."""
    folder = Path(path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    candidate, number = folder, 1
    while True:
        try:
            candidate.mkdir()
            return str(candidate)
        except FileExistsError:
            number += 1
            candidate = folder.with_name(f"{folder.name}_{number}")


def valid_names(kind: str) -> str:
    """``archs`` and ``heads`` from the model registry, the explanation ``methods``, or the options of a config group (``data``, ``experiment``)."""
    if kind == "archs":
        from .models import list_models

        return ", ".join(list_models()) + ", torchvision:<name> (with model.split)"
    if kind == "heads":
        from .models import HEADS

        return ", ".join(HEADS)
    if kind == "methods":
        from .explain import METHODS

        return ", ".join(METHODS)
    return ", ".join(sorted(path.stem for path in (config_dir() / kind).glob("*.yaml")))


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("abn.cwd", os.getcwd, replace=True)
    OmegaConf.register_new_resolver("abn.workers", at_most_cores, replace=True)
    OmegaConf.register_new_resolver("abn.job_folder", job_folder_name, replace=True)
    OmegaConf.register_new_resolver("abn.names", valid_names, replace=True)
    # cached: the folder is made once per config however often Hydra reads hydra.run.dir (a sweep's jobs copy the cache)
    OmegaConf.register_new_resolver("abn.new_folder", claim_new_folder, replace=True, use_cache=True)


register_resolvers()
