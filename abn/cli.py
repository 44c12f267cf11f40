"""What both command-line entry points (``abn-train``, ``abn-explain``) share: errors reported as one message, the
run's log in its folder, and no empty run folder left behind by a run that failed on bad input."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hydra.errors import CompactHydraException, InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch.multiprocessing.spawn import ProcessRaisedException

log = logging.getLogger("abn")

# Exceptions whose message is the whole story for a user (a missing file, a wrong value): printed without traceback.
USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, MisconfigurationException)


class UserError(CompactHydraException):
    """Bad input (missing data, a wrong value, a checkpoint of another model): Hydra prints only the message."""


def user_error_of(error: BaseException) -> BaseException | None:
    """The user error behind ``error`` (Hydra's ``instantiate`` wraps what a constructor raised, a ``ddp_spawn``
    run's processes hand theirs over as text), or None."""
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, ProcessRaisedException):
        return error_raised_in_process(error)
    return error if isinstance(error, USER_ERRORS) else None


def error_raised_in_process(error: ProcessRaisedException) -> BaseException | None:
    """The exception that ended a process of a ``ddp_spawn`` run (e.g. ``TrainingDiverged``), rebuilt from the
    traceback text, which is all that torch passes to the main process; None unless it is one of the
    ``USER_ERRORS`` of a module already imported here."""
    last_traceback = str(error).rpartition("Traceback (most recent call last):\n")[2]
    lines = last_traceback.splitlines()
    # the frames are indented; the exception follows them as "module.Class: message", the message maybe several lines
    start = next((index for index, line in enumerate(lines) if line and not line[0].isspace()), None)
    if start is None:
        return None
    name, _, first_line = lines[start].partition(": ")
    module_name, _, class_name = name.rpartition(".")
    kind = getattr(sys.modules.get(module_name or "builtins"), class_name, None)
    if not (isinstance(kind, type) and issubclass(kind, USER_ERRORS)):
        return None
    try:
        return kind("\n".join([first_line, *lines[start + 1:]]).rstrip())
    except Exception:  # a class that is not built from its message alone
        return None


def route_library_logs_to_run_log() -> None:
    """Send Lightning's messages through the root logger that Hydra writes to ``<run>/<job>.log`` and the console.

    Lightning gives its loggers a console handler of their own and stops them propagating when it is imported
    before logging is configured, which kept them out of the run's log file. Python warnings go there too.
    """
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics"):
        library_log = logging.getLogger(name)
        library_log.handlers.clear()
        library_log.propagate = True
    logging.captureWarnings(True)


def log_to_file_only(level: int, message: str) -> None:
    """Write ``message`` to the run's log file but not the console (where Hydra prints the error itself)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def holds_results(run_dir: Path) -> bool:
    """Whether a run folder holds anything but its settings (``.hydra``), logs and an empty TensorBoard start."""
    return any(run_dir.rglob("*.ckpt")) or any((run_dir / name).exists() for name in ("grids", "metrics.csv"))


@contextmanager
def reported_errors(run_dir: Path, fresh_folder: bool) -> Iterator[None]:
    """Turn bad-input errors into :class:`UserError` (message only; ``HYDRA_FULL_ERROR=1`` keeps the traceback),
    write every error to the run's log, and remove the run folder this run made if it failed before writing any
    result. A folder that holds results, or that an earlier run made (a resume), is kept and named."""
    try:
        yield
    except Exception as error:
        user_error = user_error_of(error)
        message = str(user_error) if user_error is not None else f"{type(error).__name__}: {error}"
        if multirun():  # Hydra reports only the first failed job of a sweep: name each one as it fails
            log.error("This job failed: %s", message)
        else:
            log_to_file_only(logging.ERROR, message)
        removable = user_error is not None and not getattr(user_error, "keep_run_folder", False)
        if fresh_folder and removable and run_dir.is_dir() and not holds_results(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
            where = ""
        else:
            where = f"\n(the run's log: {run_dir / log_file_name()})"
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            if where:
                log.error(where.strip().strip("()"))
            raise
        raise UserError(message + where) from error


def multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def log_file_name() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return f"{HydraConfig.get().job.name}.log"
    except ValueError:
        return "train.log"
