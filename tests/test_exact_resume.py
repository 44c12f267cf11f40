"""A run resumed from a checkpoint ends with the weights of the run that was never stopped, bit for bit: from the
end of an epoch and from the middle of one (a step checkpoint), with and without loader worker processes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch

from abn.data.resumable import run_seed
from abn.train import seed_run

from .conftest import train_once

# 6 steps an epoch, 3 epochs; every epoch's checkpoint kept (epoch_000.ckpt …) and one every 5 steps (step_005.ckpt …)
RUN = ["data.train_size=96", "data.val_size=32", "data.test_size=32", "data.batch_size=16", "trainer.max_epochs=3",
       "trainer.deterministic=true", "callbacks.attention_images=null", "callbacks.model_checkpoint.save_top_k=-1",
       "callbacks.model_checkpoint.monitor=null", "callbacks.step_checkpoint.every_n_train_steps=5",
       "callbacks.step_checkpoint.filename='step_{step:03d}'", "callbacks.step_checkpoint.save_top_k=-1"]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [name for name in a if not torch.equal(a[name], b[name])]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Callable[[int], Path]:
    """The run folder of the whole run, never stopped, with ``data.num_workers`` loader processes (made once)."""
    runs: dict[int, Path] = {}

    def run(workers: int) -> Path:
        if workers not in runs:
            runs[workers] = train_once(tmp_path_factory.mktemp(f"workers{workers}"), [*RUN, f"data.num_workers={workers}"])
        return runs[workers]

    return run


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2 workers"])
@pytest.mark.parametrize("checkpoint", ["epoch_000.ckpt", "step_010.ckpt"], ids=["epoch end", "mid-epoch"])
def test_resumed_run_ends_with_the_weights_of_the_uninterrupted_run(uninterrupted, workers, checkpoint, tmp_path: Path):
    run = uninterrupted(workers)
    saved = torch.load(run / "checkpoints" / checkpoint, map_location="cpu", weights_only=True)
    assert saved["global_step"] in (6, 10)  # the end of epoch 0; step 10 is batch 4 of 6 in epoch 1
    # the checkpoint as a killed run left it, copied away from the finished run's folder
    start = tmp_path / "killed" / checkpoint
    start.parent.mkdir()
    shutil.copy(run / "checkpoints" / checkpoint, start)

    resumed = train_once(tmp_path, [*RUN, f"data.num_workers={workers}", f"ckpt_path={start}"])

    assert differing(final_weights(resumed), final_weights(run)) == []


def test_the_order_and_augmentation_do_not_depend_on_the_worker_count(uninterrupted):
    assert differing(final_weights(uninterrupted(0)), final_weights(uninterrupted(2))) == []


def test_a_run_without_a_seed_does_not_replay_the_seed_an_earlier_run_of_the_process_left(monkeypatch):
    """Jobs of a sweep run one after the other in one process: ``seed=null`` after a seeded job must not take the
    order and draws derived from that job's seed."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # as an earlier job's seed_everything(7) left it
    seed_run(None)
    assert run_seed() is None
    seed_run(3)
    assert run_seed() == 3
