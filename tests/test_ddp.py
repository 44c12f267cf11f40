"""``abn-train trainer=ddp`` on a machine without GPUs: 2 processes on the CPU (ddp_spawn, gloo), run as a user runs
them, the real command in a process of its own. Rank 0 alone writes the checkpoints and the TensorBoard log, the
logged metrics are those of the whole split, each process trains on its own half of every epoch, a resumed run ends
with the weights of the run that was never stopped, a batch whose images were all unreadable does not hang the
other process, and a run that diverges says so as a single process does."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.multiprocessing.spawn import ProcessRaisedException
from torch.utils.data import DataLoader, Subset

from abn.cli import user_error_of
from abn.config import config_dir
from abn.module import TrainingDiverged
from abn.train import settle_sync_batchnorm

from .conftest import TINY_SHAPES, make_fashion_mnist
from .test_interrupt import LONGER, signal_during_training
from .data.test_folder import write_class_folders

REPOSITORY = Path(__file__).resolve().parents[1]
# trainer=ddp as it is, on the CPU also where the machine has GPUs; the memory format and precision as set (no
# measuring of the faster one)
DDP = ["trainer=ddp", *(["trainer.accelerator=cpu"] if torch.cuda.is_available() else []), "model.channels_last=false",
       "trainer.precision=32-true", "+trainer.num_sanity_val_steps=0"]


def abn_train(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``abn-train arguments`` in ``cwd``; tests.test_ddp importable there (for :class:`RecordTrainingImages`)."""
    installed = shutil.which("abn-train")
    command = [installed] if installed else [sys.executable, "-m", "abn.train"]
    paths = [str(REPOSITORY), *filter(None, [os.environ.get("PYTHONPATH")])]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run([*command, *arguments], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=600)


def succeeded(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def the_run(folder: Path) -> Path:
    (run,) = (folder / "logs" / "train" / "runs").iterdir()
    return run


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


class RecordTrainingImages(L.Callback):
    """Writes ``seen_by_rank<R>.json`` into the run folder: per epoch, a digest of every training image this process
    trained on (the data without augmentation, so that an image is the same in every epoch)."""

    def __init__(self) -> None:
        self.seen: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        digests = [hashlib.sha1(image.cpu().numpy().tobytes()).hexdigest() for image in batch[0]]
        self.seen.setdefault(trainer.current_epoch, []).extend(digests)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        (Path(trainer.default_root_dir) / f"seen_by_rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


# Fashion-MNIST on the device (DeviceBatches): 100 training images (120 − 20 for validation), 40 test images; batch
# 10, so 10 steps an epoch in one process and 5 in each of 2. Two epochs, a checkpoint every 3 steps besides the
# epoch ones.
FASHION_TRAIN, FASHION_TEST, FASHION_VAL = 120, 40, 20


def fashion_arguments(root: Path, on_device: bool) -> list[str]:
    return [*DDP, "data=fashion_mnist", f"data.on_device={str(on_device).lower()}", f"data.root={root}", "+data.search_dirs=[]",
            "data.download=false", f"data.val_size={FASHION_VAL}", "data.augment=false", "data.num_workers=0",
            "data.batch_size=10", "trainer.max_epochs=2", "seed=0", "callbacks.attention_images.num_images=2",
            "callbacks.step_checkpoint.every_n_train_steps=3", "callbacks.step_checkpoint.filename='step_{step:03d}'",
            "callbacks.step_checkpoint.save_top_k=-1", "+callbacks.record._target_=tests.test_ddp.RecordTrainingImages"]


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fashion")
    make_fashion_mnist(root / "FashionMNIST" / "raw", train=FASHION_TRAIN, test=FASHION_TEST, compress=False)
    return root


@pytest.fixture(scope="module", params=[True, False], ids=["on device", "data loaders"])
def fashion_run(request, tmp_path_factory, fashion_root) -> tuple[Path, str, bool]:
    """The run folder of a 2-process run, fitted and tested, what it printed, and whether its data was on the
    device (DeviceBatches) or read by data loaders (abn.data.resumable's EpochShuffle sharded per process)."""
    folder = tmp_path_factory.mktemp("ddp")
    printed = succeeded(abn_train(fashion_arguments(fashion_root, request.param), folder))
    return the_run(folder), printed, request.param


def test_ddp_trains_two_cpu_processes_and_rank_0_alone_writes_checkpoints_and_tensorboard(fashion_run):
    run, printed, _ = fashion_run
    assert "distributed_backend=gloo" in printed and "Starting with 2 processes" in printed
    assert "Training finished" in printed
    checkpoints = sorted(path.name for path in (run / "checkpoints").iterdir())
    best = [name for name in checkpoints if name.startswith("epoch_")]
    # one set: no second copy from the other process (last-v1.ckpt …), nothing half written
    assert len(best) == 1 and sorted(set(checkpoints) - set(best)) == [
        "last.ckpt", "step_003.ckpt", "step_006.ckpt", "step_009.ckpt"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    # one TensorBoard log (no version folders), each epoch's figure and validation accuracy in it once
    assert [path.name for path in (run / "tensorboard").iterdir() if path.is_dir()] == []
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert [image.step for image in events.Images("val/attention")] == [5, 10]
    assert [scalar.step for scalar in events.Scalars("val/acc")] == [4, 9]


def test_each_process_trains_on_its_own_half_of_every_epoch(fashion_run):
    run, _, _ = fashion_run
    seen = [json.loads((run / f"seen_by_rank{rank}.json").read_text()) for rank in range(2)]
    training_images = FASHION_TRAIN - FASHION_VAL
    for epoch in ("0", "1"):
        first, second = (set(by_rank[epoch]) for by_rank in seen)
        assert len(seen[0][epoch]) == len(seen[1][epoch]) == len(first) == len(second) == training_images // 2
        assert not first & second and len(first | second) == training_images  # together: every image once
    assert seen[0]["0"] != seen[0]["1"]  # a new order, and a new share, every epoch


def test_the_test_metrics_of_rank_0_are_those_of_the_whole_test_split(fashion_run, fashion_root):
    """The 2-process test of the final weights logs what one process measures on all 40 test images, not what rank 0
    measured on its 20."""
    from abn.data import FashionMNISTDataModule
    from abn.module import ABNModule

    run, _, _ = fashion_run
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    logged = {name: events.Scalars(name)[-1].value for name in ("test/acc", "test/loss")}

    model = ABNModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    data = FashionMNISTDataModule(root=str(fashion_root), search_dirs=[], download=False, val_size=FASHION_VAL,
                                  augment=False, num_workers=0, batch_size=10)
    one_process = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False)
    whole = one_process.test(model, datamodule=data, verbose=False)[0]
    rank_0_half = Subset(data.test_set, range(0, FASHION_TEST, 2))
    half = one_process.test(model, dataloaders=DataLoader(rank_0_half, batch_size=10), verbose=False)[0]

    assert logged["test/acc"] == pytest.approx(whole["test/acc"], abs=1e-6)
    assert logged["test/loss"] == pytest.approx(whole["test/loss"], rel=1e-5)
    assert abs(half["test/loss"] - whole["test/loss"]) > 1e-3 * whole["test/loss"]  # rank 0's own would differ


def test_a_run_resumed_mid_epoch_under_ddp_ends_with_the_weights_of_the_uninterrupted_run(fashion_run, fashion_root,
                                                                                          tmp_path: Path):
    run, _, on_device = fashion_run
    start = tmp_path / "killed" / "step_006.ckpt"  # epoch 1, 1 of its 5 steps done: as a killed run left it
    start.parent.mkdir()
    shutil.copy(run / "checkpoints" / "step_006.ckpt", start)

    printed = succeeded(abn_train([*fashion_arguments(fashion_root, on_device), f"ckpt_path={start}", "test=false"], tmp_path))

    assert "Starting with 2 processes" in printed
    resumed = weights(the_run(tmp_path) / "checkpoints" / "last.ckpt")
    uninterrupted = weights(run / "checkpoints" / "last.ckpt")
    assert [name for name in uninterrupted if not torch.equal(resumed[name], uninterrupted[name])] == []


def test_a_batch_whose_images_were_all_unreadable_does_not_hang_the_other_process(tmp_path: Path):
    """One process gets an empty batch (its one image unreadable): it makes a zero update, in step with the other."""
    images = tmp_path / "images"
    write_class_folders(images, {"a": 4, "b": 4}, size=(32, 32))
    broken = sorted((images / "a").iterdir())[0]
    broken.write_bytes(b"broken")
    result = abn_train([*DDP, "data=folder", f"data.root={images}", "data.image_size=32", "data.resize_only=true",
                        "data.val_size=0", "data.test_size=2", "data.num_workers=0", "data.batch_size=1",
                        "model.arch=resnet20", "trainer.max_epochs=1", "test=false", "logger=none",
                        "callbacks.attention_images=null"], tmp_path)

    printed = succeeded(result)
    assert "unreadable image(s) were skipped (1 in train" in printed
    # 6 training images, 3 for each process, a batch each: 3 steps (the empty batch's counted, with no update)
    assert torch.load(the_run(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_a_diverged_ddp_run_prints_the_message_alone_and_fails(tmp_path: Path):
    result = abn_train([*DDP, *TINY_SHAPES, "model.optimizer.lr=1e6", "trainer.max_epochs=2", "test=false",
                        "callbacks.attention_images=null"], tmp_path)

    printed = result.stdout + result.stderr
    assert result.returncode == 1, printed[-4000:]
    assert "Training diverged at global step" in printed and " on process 0 of 2" in printed
    assert "Traceback" not in printed and "ProcessRaisedException" not in printed
    assert f"(the run's log: {the_run(tmp_path) / 'train.log'})" in printed


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
def test_sigterm_to_abn_train_stops_every_process_at_one_batch_saves_and_the_run_resumes(tmp_path: Path):
    """The signal goes to the main process only (as ``kill <pid>`` sends it), which passes it on to the processes
    it started; 2 processes × 16 steps in the epoch."""
    arguments = [*DDP, *(argument for argument in LONGER if argument not in DDP)]
    status, printed = signal_during_training(arguments, tmp_path, signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, printed[-4000:]
    assert "Stopped by SIGTERM in epoch 0" in printed and "Training finished" not in printed
    assert "Traceback" not in printed and "ProcessExitedException" not in printed, printed[-4000:]
    checkpoint = the_run(tmp_path) / "checkpoints" / "last.ckpt"
    assert f"resume it with:           abn-train ckpt_path={checkpoint}" in printed
    assert 0 < torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"] < 16

    resumed = succeeded(abn_train([f"ckpt_path={checkpoint}"], tmp_path))
    assert "Training finished" in resumed
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"] == 16


@pytest.mark.parametrize("cuda, overrides, synced", [
    (False, {}, False), (True, {}, True), (True, {"accelerator": "cpu"}, False), (True, {"sync_batchnorm": False}, False),
], ids=["cpu only", "gpus", "cpu chosen", "off chosen"])
def test_trainer_ddp_syncs_batchnorm_where_it_trains_on_gpus(monkeypatch, cuda, overrides, synced):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    trainer = OmegaConf.merge(OmegaConf.load(config_dir() / "trainer" / "ddp.yaml"), overrides)
    settle_sync_batchnorm(trainer)
    assert trainer.sync_batchnorm is synced


def failure_in_a_process(error: BaseException) -> ProcessRaisedException:
    """What the main process of a ddp_spawn run gets when ``error`` ends one of its processes: the traceback text."""
    try:
        try:
            raise KeyError("an earlier error")
        except KeyError:
            raise error
    except BaseException:
        text = traceback.format_exc()
    return ProcessRaisedException(f"\n\n-- Process 1 terminated with the following error:\n{text}", 1, 4321)


def test_a_user_error_of_a_spawned_process_is_reported_as_that_process_raised_it():
    message = "Training diverged at global step 3: …\nThe last good checkpoint is last.ckpt.\n  Train again with …"
    found = user_error_of(failure_in_a_process(TrainingDiverged(message)))
    assert isinstance(found, TrainingDiverged) and str(found) == message and found.keep_run_folder
    assert str(user_error_of(failure_in_a_process(FileNotFoundError("no such file: x.ckpt")))) == "no such file: x.ckpt"
    assert user_error_of(failure_in_a_process(RuntimeError("a bug"))) is None  # not the user's: its traceback is shown
