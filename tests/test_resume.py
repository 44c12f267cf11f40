"""``abn-train ckpt_path=<run>/checkpoints/last.ckpt`` continues that run: its folder, its TensorBoard run, its
settings; overrides typed with it are applied and checked."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import abn.train as train_cli
from abn.resume import changed_settings, quoted, resume_arguments

from .conftest import TINY_SHAPES, run_cli

# two epochs of two steps; epoch_000.ckpt is where an interrupted run would have stopped
FIRST_RUN = [*TINY_SHAPES, "trainer.max_epochs=2", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
             "trainer.log_every_n_steps=1", "callbacks.attention_images.num_images=2", "model.optimizer.lr=0.05"]


def event_steps(tensorboard: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tensorboard), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


def test_resume_continues_in_the_same_folder_with_the_runs_settings(tmp_path, monkeypatch, capsys):
    run_cli(train_cli.main, FIRST_RUN, tmp_path, monkeypatch, capsys)
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    last = run / "checkpoints" / "last.ckpt"
    epoch_0 = run / "checkpoints" / "epoch_000.ckpt"
    assert epoch_0.is_file()

    # continue from the epoch-0 checkpoint with nothing retyped: the run's own settings (batch size, lr, ...) apply
    _, printed, _ = run_cli(train_cli.main, [f"ckpt_path={epoch_0}"], tmp_path, monkeypatch, capsys)
    assert f"Resuming the run in {run}" in printed
    assert sorted(p.name for p in (tmp_path / "logs" / "train" / "runs").iterdir()) == [run.name]  # no new folder
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert saved.data.batch_size == 16 and saved.model.optimizer.lr == 0.05 and saved.ckpt_path == str(epoch_0)
    previous = list((run / ".hydra" / "previous").glob("*/config.yaml"))
    assert len(previous) == 1 and OmegaConf.load(previous[0]).ckpt_path is None  # the first settings are kept
    # one TensorBoard run whose steps go on from the checkpoint's (epoch 1 logged twice, epoch 0 once)
    assert [p.name for p in (run / "tensorboard").iterdir() if p.is_dir()] == []
    steps = sorted(event_steps(run / "tensorboard", "train/loss_step"))
    assert len(steps) == 6 and steps[:2] == [steps[0], steps[0] + 1] and len(set(steps)) == 4
    assert "Resuming the run in" in (run / "train.log").read_text()
    assert last.is_file()


def test_overrides_typed_with_the_resume_apply_and_are_listed(tmp_path, monkeypatch, capsys):
    run_cli(train_cli.main, FIRST_RUN, tmp_path, monkeypatch, capsys)
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    arguments = [f"ckpt_path={run / 'checkpoints' / 'epoch_000.ckpt'}", "trainer.log_every_n_steps=2"]
    _, printed, _ = run_cli(train_cli.main, arguments, tmp_path, monkeypatch, capsys)
    assert "Resuming with changed settings: trainer.log_every_n_steps: 1 → 2" in printed
    assert OmegaConf.load(run / ".hydra" / "config.yaml").trainer.log_every_n_steps == 2


@pytest.mark.parametrize("override, named", [
    ("trainer.max_epochs=3", "trainer.max_epochs: 2 → 3"),  # the one-cycle schedule was sized to 2 epochs
    ("model.optimizer.lr=0.5", "model.optimizer.lr: 0.05 → 0.5"),  # restored from the checkpoint: would be ignored
])
def test_changes_a_resumed_run_cannot_honour_are_refused_and_nothing_is_lost(tmp_path, monkeypatch, capsys, override,
                                                                            named):
    run_cli(train_cli.main, FIRST_RUN, tmp_path, monkeypatch, capsys)
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix != ".log"}
    code, _, error = run_cli(train_cli.main, [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", override], tmp_path,
                             monkeypatch, capsys, expect_success=False)
    assert code == 1 and named in error and "Traceback" not in error
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix != ".log"} == before
    assert run.is_dir()


def test_a_checkpoint_outside_a_run_folder_with_another_schedule_length_is_refused_before_training(
        tmp_path, monkeypatch, capsys):
    run_cli(train_cli.main, FIRST_RUN, tmp_path, monkeypatch, capsys)
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    loose = tmp_path / "copied.ckpt"
    loose.write_bytes((run / "checkpoints" / "epoch_000.ckpt").read_bytes())
    code, _, error = run_cli(train_cli.main, [f"ckpt_path={loose}", *TINY_SHAPES, "trainer.max_epochs=3"], tmp_path,
                             monkeypatch, capsys, expect_success=False)
    assert code == 1 and "made for a run of 4 optimizer steps, this run has 12" in error
    assert sorted(p.name for p in (tmp_path / "logs" / "train" / "runs").iterdir()) == [run.name]  # no empty folder


def test_a_multirun_jobs_checkpoint_resumes_its_job_unquoted(tmp_path, monkeypatch, capsys):
    sweep = ["-m", *FIRST_RUN, "model.head=baseline,abn"]
    run_cli(train_cli.main, sweep, tmp_path, monkeypatch, capsys)
    jobs = sorted((tmp_path / "logs" / "train" / "multiruns").glob("*/*/checkpoints/epoch_000.ckpt"))
    assert len(jobs) == 2
    job = jobs[0].parents[1]
    assert "=" not in job.name and "," not in job.name and job.name.startswith("0_")
    _, printed, _ = run_cli(train_cli.main, [f"ckpt_path={jobs[0]}"], tmp_path, monkeypatch, capsys)
    assert f"Resuming the run in {job}" in printed
    assert OmegaConf.load(job / ".hydra" / "config.yaml").model.head == "baseline"
    assert not (tmp_path / "logs" / "train" / "runs").exists()


def test_resume_arguments_put_the_runs_overrides_first_and_the_typed_ones_win(tmp_path):
    run = tmp_path / "logs" / "train" / "runs" / "2026-01-01_00-00-00"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    OmegaConf.save(OmegaConf.create(["model.head=cam", "trainer.max_epochs=5", "+data.extra=1"]),
                   run / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"seed": 0}), run / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"cwd": "/some where"}}}), run / ".hydra" / "hydra.yaml")
    argv = [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=7"]
    assert resume_arguments(argv) == [
        "model.head=cam", "+data.extra=1", *argv, "paths.root_dir='/some where'", f"hydra.run.dir={quoted(str(run))}",
        "hydra.output_subdir=null",
    ]
    assert resume_arguments(["-m", *argv]) == ["-m", *argv]  # a sweep is not a resume
    assert resume_arguments(["ckpt_path=/nowhere.ckpt"]) == ["ckpt_path=/nowhere.ckpt"]  # train() names the problem


def test_changed_settings_compare_interpolations_as_written():
    old = OmegaConf.create({"data": {"root": "${paths.data_dir}", "batch_size": 4}, "paths": {"data_dir": "/a"}})
    new = OmegaConf.create({"data": {"root": "${paths.data_dir}", "batch_size": 8}, "paths": {"data_dir": "/b"}})
    assert changed_settings(old, new) == {"data.batch_size": (4, 8)}
