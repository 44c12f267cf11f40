"""A run stopped by its scheduler says so: on SIGTERM (a kill, ``scancel``, a pre-emption) or SIGUSR1 (the warning
``#SBATCH --signal`` sends), ``abn-train`` saves the training state to ``last.ckpt`` at the end of the batch under
way, prints what it saved and how to resume, and exits with 128 + the signal's number, never with success.

Where Lightning's SLURM auto-requeue is on, SIGUSR1 is left to it (it saves and requeues the job itself). In a job of
``hydra/launcher=slurm`` (submitit), submitit's signal (SIGUSR2 before the time limit) is handled too and, once
``last.ckpt`` is saved, handed on to submitit, which requeues the job (see :mod:`abn.slurm`).
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.environments import SLURMEnvironment
from torch.multiprocessing.spawn import ProcessExitedException

from .slurm import requeue_signal, submitit_job

log = logging.getLogger("abn")


class Interrupted(SystemExit):
    """The run stopped on a signal; its exit status is 128 + the signal's number (as a shell reports a kill)."""


def signals_to_handle(trainer: Optional[L.Trainer] = None) -> list[signal.Signals]:
    handled = [signal.SIGTERM]
    environment = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
    slurm_requeues = isinstance(environment, SLURMEnvironment) and environment.auto_requeue
    if hasattr(signal, "SIGUSR1") and not slurm_requeues:
        handled.append(signal.SIGUSR1)
    submitit_requeues = requeue_signal()
    if submitit_requeues is not None and submitit_requeues not in handled:
        handled.append(submitit_requeues)
    return handled


def sweep_size(arguments: list[str]) -> int:
    """How many jobs a multirun command line makes (the product of its sweep lengths); 0 if it cannot tell."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in arguments if not a.startswith("-")])
        return math.prod(len(list(o.sweep_string_iterator())) for o in overrides if o.is_sweep_override())
    except Exception:
        return 0


class StopOnSignal(Callback):
    """Checks at every batch end whether a signal came (all ranks agree under DDP); then saves and stops."""

    def __init__(self) -> None:
        self.received: Optional[signal.Signals] = None
        self._earlier: dict[signal.Signals, Any] = {}  # the handlers that were there before ours
        self._trainer: Optional[L.Trainer] = None

    @contextmanager
    def listening(self, trainer: L.Trainer) -> Iterator[None]:
        """Handle the signals while the block runs (training and testing), then put the earlier handlers back."""
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        earlier = self._earlier = {number: signal.getsignal(number) for number in signals_to_handle(trainer)}
        self._trainer = trainer
        for number in earlier:
            signal.signal(number, self._note)
        try:
            yield
        except ProcessExitedException as ended:  # ddp_spawn: its processes stopped on the signal passed on to them
            number = self.received or stopping_signal(ended.exit_code)
            if number is None:
                raise
            raise stopped_by(number, trainer) from None
        except SystemExit as stop:  # Lightning's own stop on SIGTERM exits with status 0: not a success
            if self.received is None or isinstance(stop, Interrupted):
                raise
            raise stopped_by(self.received, trainer) from stop
        finally:
            for number, handler in earlier.items():
                signal.signal(number, handler)
            self._trainer = None

    def _note(self, number: int, _frame: Any) -> None:
        if self.received is None:
            self.received = signal.Signals(number)
            log.warning("Received %s: stopping at the end of this batch", self.received.name)
            # the processes this one started (ddp_spawn's, or those strategy=ddp launches) stop with it
            launcher = getattr(getattr(self._trainer, "strategy", None), "launcher", None)
            if getattr(launcher, "procs", None):
                launcher.kill(number)

    def _listen_in_every_process(self, trainer: L.Trainer) -> None:
        """Every process notes the signal itself (under DDP the batch end then agrees on it) and nothing else does:
        Lightning's SIGTERM handler, put in place after on_fit_start, is replaced. Lightning ends a run on SIGTERM
        at its next batch end without saving it (our batch-end check may have passed already), and under DDP it
        broadcasts from inside the handler, which no other process meets (the run hung)."""
        if threading.current_thread() is threading.main_thread():
            for number in signals_to_handle(trainer):
                signal.signal(number, self._note)

    def on_sanity_check_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._listen_in_every_process(trainer)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._listen_in_every_process(trainer)

    def on_test_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._listen_in_every_process(trainer)

    def _stop_requested(self, trainer: L.Trainer, agreed: Optional[bool] = None) -> bool:
        """Whether any process got a signal; ``agreed``: the processes' answer already exchanged in the step."""
        received = self.received is not None
        if trainer.world_size > 1:
            received = agreed if agreed is not None else trainer.strategy.reduce_boolean_decision(received, all=False)
            if received and self.received is None:
                self.received = signal.SIGTERM  # another rank got it
        return received

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        """An ABNModule's training step asks the processes of a DDP run in its one exchange (ABNModule.stop_wanted,
        stop_agreed): the batch end then needs no exchange of its own."""
        if hasattr(module, "stop_agreed"):
            module.stop_wanted, module.stop_agreed = self.received is not None, None

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._stop_requested(trainer, getattr(module, "stop_agreed", None)):
            self._stop(trainer, save=True, inside_epoch=batch_idx + 1 < trainer.num_training_batches)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._stop_requested(trainer):  # a signal during the epoch's validation
            self._stop(trainer, save=True)

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._stop_requested(trainer):
            self._stop(trainer, save=False)

    def _stop(self, trainer: L.Trainer, save: bool, inside_epoch: bool = False) -> None:
        name = self.received.name if self.received is not None else "a signal"
        lines = [f"Stopped by {name} in epoch {trainer.current_epoch}, after {trainer.global_step} optimizer steps."]
        checkpoint = checkpoint_folder(trainer) / "last.ckpt"
        if save:
            trainer.save_checkpoint(checkpoint, weights_only=False)
            lines += [f"  saved the training state: {checkpoint}",
                      f"  resume it with:           abn-train ckpt_path={checkpoint}"]
            if inside_epoch:
                lines.append("  (stopped inside an epoch: the resumed run trains the rest of it, after the batches "
                             "already trained)")
        else:
            lines += ["  training had finished; the test was cut short",
                      f"  test it again with:       abn-train ckpt_path={checkpoint} train=false"]
        lines += sweep_note()
        if trainer.is_global_zero:
            log.error("\n".join(lines))
        self._hand_on_to_submitit(checkpoint)
        raise Interrupted(128 + int(self.received or signal.SIGTERM))

    def _hand_on_to_submitit(self, checkpoint: Path) -> None:
        """In a submitit job, submitit's signal goes on to submitit's handler once the checkpoint is saved: it requeues
        the job (and exits), or raises why not (too many time-outs), which fails the job with that message."""
        handler = self._earlier.get(self.received)
        if self.received is None or self.received != requeue_signal() or not callable(handler):
            return
        try:
            handler(int(self.received), None)
        except SystemExit:  # submitit has requeued the job
            log.warning("Requeued: SLURM starts this job again in the same folder, where it continues from %s",
                        checkpoint)


def stopping_signal(exit_code: Optional[int]) -> Optional[signal.Signals]:
    """The signal a process that exited with ``exit_code`` was stopped by (``Interrupted``'s 128 + number)."""
    try:
        number = signal.Signals(exit_code - 128) if exit_code is not None and exit_code > 128 else None
    except ValueError:
        return None
    return number if number in signals_to_handle() else None


def checkpoint_folder(trainer: L.Trainer) -> Path:
    callback = trainer.checkpoint_callback
    folder = getattr(callback, "dirpath", None)
    return Path(folder) if folder else Path(trainer.default_root_dir) / "checkpoints"


def stopped_by(number: signal.Signals, trainer: L.Trainer) -> Interrupted:
    """Log where the stopped run's checkpoints are (and, in a sweep, which jobs did not run); the exit to raise."""
    log.error("\n".join([f"Stopped by {number.name}; the run's checkpoints are in {checkpoint_folder(trainer)}",
                          *sweep_note()]))
    return Interrupted(128 + int(number))


def sweep_note() -> list[str]:
    """In a multirun, which jobs will not run because this one stopped the sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN or submitit_job():
        return []  # a SLURM sweep's jobs run on their own
    number = HydraConfig.get().job.num
    total = sweep_size(sys.argv[1:])
    after = f"jobs {number + 1} to {total - 1}" if total > number + 2 else f"job {number + 1}" if total == number + 2 \
        else "the later jobs" if total == 0 else None
    if after is None:
        return ["  this was the sweep's last job"]
    return [f"  the sweep stops here: {after} did not run (finished jobs keep their folders; start the sweep again, "
            "or resume this job first with the command above)"]
