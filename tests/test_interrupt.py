"""abn-train stopped by a scheduler's signal: the state is saved, the way to resume printed, the exit status is not
success, and a sweep says which jobs did not run. Each test runs the installed ``abn-train`` command in a process
of its own and sends it the signal, as a scheduler does."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from abn.data import ShapesDataModule
from abn.interrupt import Interrupted, StopOnSignal, checkpoint_folder
from abn.module import ABNModule

from .conftest import TINY_SHAPES

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")

# long enough that the signal arrives during training: 32 steps
LONGER = ["data.train_size=512", "data.val_size=32", "data.test_size=32", "data.batch_size=16", "trainer.max_epochs=1",
          "+trainer.num_sanity_val_steps=0", "callbacks.attention_images=null"]


def abn_train() -> list[str]:
    installed = shutil.which("abn-train")
    return [installed] if installed else [sys.executable, "-m", "abn.train"]


def signal_during_training(arguments: list[str], cwd: Path, number: int, marker: str = "Epoch 0:") -> tuple[int, str]:
    """Start ``abn-train arguments``, send ``number`` once ``marker`` (the progress bar) is printed; (status, output)."""
    output = cwd / "output.txt"
    with open(output, "w") as sink:
        process = subprocess.Popen([*abn_train(), *arguments], cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while marker not in output.read_text() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, f"abn-train ended before training started:\n{output.read_text()[-3000:]}"
        os.kill(process.pid, number)
        status = process.wait(timeout=300)
    return status, output.read_text()


def test_sigterm_saves_the_state_says_how_to_resume_and_the_resumed_run_finishes(tmp_path: Path):
    status, printed = signal_during_training(LONGER, tmp_path, signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, printed[-3000:]
    assert "Stopped by SIGTERM in epoch 0" in printed and "Training finished" not in printed
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert f"resume it with:           abn-train ckpt_path={checkpoint}" in printed
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert 0 < saved["global_step"] < 32 and "optimizer_states" in saved

    resumed = subprocess.run([*abn_train(), f"ckpt_path={checkpoint}"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Training finished" in resumed.stdout
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"] == 32


def test_sigusr1_stops_the_same_way(tmp_path: Path):
    status, printed = signal_during_training(LONGER, tmp_path, signal.SIGUSR1)
    assert status == 128 + signal.SIGUSR1 and "Stopped by SIGUSR1" in printed, printed[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_a_stopped_sweep_names_the_jobs_that_did_not_run(tmp_path: Path):
    status, printed = signal_during_training(["-m", "seed=0,1,2", *LONGER], tmp_path, signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, printed[-3000:]
    assert "the sweep stops here: jobs 1 to 2 did not run" in printed
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    (job,) = [job for job in sweep.iterdir() if job.is_dir()]  # job 0 only
    assert job.name.startswith("0_") and (job / "checkpoints" / "last.ckpt").is_file()


def test_the_signal_handlers_are_put_back_after_the_run(tmp_path: Path, monkeypatch, capsys):
    """After abn-train returns, SIGTERM ends the process again (it was ignored once training had ended)."""
    from abn.train import main

    from .conftest import run_cli

    before = signal.getsignal(signal.SIGTERM)
    run_cli(main, [*TINY_SHAPES, "trainer.max_epochs=1", "callbacks.attention_images=null"], tmp_path, monkeypatch, capsys)
    assert signal.getsignal(signal.SIGTERM) == before


class SignalAfterTheStopCheck(L.Callback):
    """Sends SIGTERM to this process at the end of the first batch, after StopOnSignal has looked for one."""

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_after_the_batch_end_check_stops_at_the_next_batch_end_with_the_state_saved(tmp_path: Path):
    """Lightning's own SIGTERM handling ended such a run at once, without saving (seen in CI, where the progress bar
    drew after the check)."""
    stopper = StopOnSignal()
    trainer = L.Trainer(max_steps=6, default_root_dir=tmp_path, callbacks=[stopper, SignalAfterTheStopCheck()],
                        logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    data = ShapesDataModule(train_size=64, val_size=16, test_size=16, batch_size=8)
    with pytest.raises(Interrupted) as stopped, stopper.listening(trainer):
        trainer.fit(ABNModule(num_classes=8), datamodule=data)
    assert stopped.value.code == 128 + signal.SIGTERM
    saved = torch.load(checkpoint_folder(trainer) / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2
