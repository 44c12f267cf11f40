"""Optuna searches (``abn-train -m hparams_search=lr_wd``, presets in ``conf/hparams_search``): the checks of the
command line, and what a trial hands the sweeper.

The Optuna sweeper (hydra-optuna-sweeper 1.3) records a trial that returns None as failed and asks for the next
one, while a trial that raises ends the whole search with that trial's error (the presets keep its
``max_failure_rate`` at 0); a nan return ends it too, with an error of the sweeper's own. So a trial whose training
diverged (nan or inf loss, likely at the high end of the learning rates tried), or whose metric is nan, returns
None: the search goes on without it. Any other error (a wrong setting, missing data) would fail every trial alike,
and stops the search at once with its message.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
from typing import Callable, Optional

from omegaconf import DictConfig

from .cli import UserError, user_error_of
from .module import TrainingDiverged

log = logging.getLogger("abn")

# Hydra's options that print (the config, help) instead of running
SHOWING_OPTIONS = ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--shell-completion", "-sc")
INSTALL_SWEEPER = 'pip install "abn[optuna]" (or pip install hydra-optuna-sweeper)'


def search_command_problem(arguments: list[str]) -> Optional[str]:
    """What is wrong with an ``abn-train`` command line that chooses a search preset, or None."""
    preset = next((a for a in arguments if a.lstrip("+").startswith("hparams_search=")), None)
    if preset is None or preset.split("=", 1)[1] in ("null", ""):
        return None
    shows_only = any(a.split("=")[0] in SHOWING_OPTIONS for a in arguments)  # e.g. --cfg job: nothing runs
    if not shows_only and not any(a in ("-m", "--multirun") or a.lower() == "hydra.mode=multirun" for a in arguments):
        return (f"{preset} runs a search of many trials: add -m, e.g. abn-train -m {preset} "
                "(without -m it would train once, with the default settings)")
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        return f"{preset} needs the Optuna sweeper for Hydra, which is not installed: {INSTALL_SWEEPER}"
    for argument in arguments:
        if argument.startswith("optimized_metric=test/"):
            return (f"{argument}: a search must not choose its settings on the test split (the test accuracy would "
                    "no longer measure unseen data); optimise a validation metric, e.g. optimized_metric=val/acc")
    return None


def in_optuna_search() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    return "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")).lower()


def diverged(error: BaseException) -> bool:
    """Whether ``error`` is a diverged training, also as the message-only :class:`UserError` that ``abn-train``
    reports it as (whose cause is the divergence, or a ``ddp_spawn`` process's error that :func:`user_error_of`
    reads it from)."""
    cause = error.__cause__ if isinstance(error, UserError) and error.__cause__ is not None else error
    return isinstance(user_error_of(cause), TrainingDiverged)


def search_trial(task: Callable[[DictConfig], Optional[float]]) -> Callable[[DictConfig], Optional[float]]:
    """``abn-train``'s Hydra job as a trial of an Optuna search: None (a failed trial) for a diverged training or a
    nan metric, and an error naming ``optimized_metric`` when the run did not log it. Outside such a search the job is
    unchanged."""

    @functools.wraps(task)
    def trial(cfg: DictConfig) -> Optional[float]:
        if not in_optuna_search():
            return task(cfg)
        try:
            value = task(cfg)
        except Exception as error:
            if diverged(error):  # its message is already printed ("This job failed: ...") and its folder kept
                return None
            raise
        if value is not None and math.isnan(value):  # the sweeper cannot record nan: a failed trial instead
            log.error("This trial's %s is nan: the search goes on without it", cfg.get("optimized_metric"))
            return None
        if value is None:
            raise UserError(f"optimized_metric={cfg.get('optimized_metric')}: this run logged no such metric, so the "
                            "search has nothing to compare (train=false runs no validation); a search needs a "
                            "validation metric the run logs, e.g. optimized_metric=val/acc")
        return value

    return trial
