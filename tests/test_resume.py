"""``abn-train ckpt_path=<run>/checkpoints/last.ckpt`` continues that run: its folder, its TensorBoard run, its
settings; overrides typed with it are applied and checked."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import abn.train as train_cli
from abn.config import config_dir
from abn.resume import changed_settings, quoted, refusal, resume_arguments

from .conftest import TINY_SHAPES, run_cli, train_once

# two epochs of two steps; epoch_000.ckpt is where an interrupted run would have stopped
FIRST_RUN = [*TINY_SHAPES, "trainer.max_epochs=2", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
             "trainer.log_every_n_steps=1", "callbacks.attention_images.num_images=2", "model.optimizer.lr=0.05"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One real run of FIRST_RUN (``abn-train`` as a user starts it), trained once for the tests that only copy it."""
    folder = tmp_path_factory.mktemp("trained")
    return train_once(folder, FIRST_RUN)


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """A copy of :func:`trained_run` under this test's ``logs/train/runs/``."""
    copy = tmp_path / "logs" / "train" / "runs" / trained_run.name
    shutil.copytree(trained_run, copy)
    return copy


def files_of(run: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in run.rglob("*") if path.is_file() and path.suffix != ".log"}


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
    ("model/scheduler=onecycle trainer.max_epochs=4", "trainer.max_epochs: 2 → 4"),  # died after 2 epochs once
    ("model.optimizer.lr=0.5", "model.optimizer.lr: 0.05 → 0.5"),  # restored from the checkpoint: would be ignored
    ("model/scheduler=cosine", "model.scheduler._target_: 'torch.optim.lr_scheduler.OneCycleLR' → "
                               "'torch.optim.lr_scheduler.CosineAnnealingLR'"),
    # the network and its loss: the checkpoint's weights were trained with the old values (once silently accepted)
    ("model.attention_mode=multiply", "model.attention_mode: 'residual' → 'multiply'"),
    ("model.attention_loss_weight=0.5", "model.attention_loss_weight: 1.0 → 0.5"),
    ("model.attention_supervision.loss=l1", "model.attention_supervision.loss: None → 'l1'"),
])
def test_changes_a_resumed_run_cannot_honour_are_refused_and_nothing_is_lost(run, tmp_path, monkeypatch, capsys,
                                                                            override, named):
    before = files_of(run)
    code, _, error = run_cli(train_cli.main, [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", *override.split()],
                             tmp_path, monkeypatch, capsys, expect_success=False)
    assert code == 1 and named in error and "Traceback" not in error
    assert files_of(run) == before
    assert run.is_dir()


def test_the_head_s_own_attention_mode_given_by_name_is_no_change(run, tmp_path, monkeypatch, capsys):
    """The run saved attention_mode null (the abn head's own: residual); naming it is the same network."""
    arguments = [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "model.attention_mode=residual", "train=false",
                 "test=false"]
    _, printed, _ = run_cli(train_cli.main, arguments, tmp_path, monkeypatch, capsys)
    assert f"Resuming the run in {run}" in printed


@pytest.mark.parametrize("overrides, named", [
    (["model.attention_mode=multiply"], "was trained with other model settings (attention_mode: checkpoint 'residual' "
                                        "vs config 'multiply')"),
    (["model/scheduler=cosine", "model.scheduler_interval=step"],
     "the checkpoint's learning-rate scheduler is of another kind (its state holds cycle_momentum, total_steps"),
    (["model/scheduler=none", "model.scheduler_interval=step"],
     "the checkpoint has a learning-rate scheduler, the config has none"),
    (["model/scheduler=cosine"], "scheduler_interval: checkpoint 'step' vs config 'epoch'"),
])
def test_a_checkpoint_outside_a_run_folder_trained_otherwise_is_refused_before_training(
        run, tmp_path, monkeypatch, capsys, overrides, named):
    """Without a run folder there are no saved settings to compare with: the checkpoint itself is compared."""
    loose = tmp_path / "copied.ckpt"
    loose.write_bytes((run / "checkpoints" / "epoch_000.ckpt").read_bytes())
    arguments = [f"ckpt_path={loose}", *FIRST_RUN, *overrides]
    code, _, error = run_cli(train_cli.main, arguments, tmp_path, monkeypatch, capsys, expect_success=False)
    assert code == 1 and named in error and "init_from=" in error and "Traceback" not in error
    assert sorted(p.name for p in (tmp_path / "logs" / "train" / "runs").iterdir()) == [run.name]  # no new folder


def crafted_config(folder: Path, marker: Path) -> str:
    """A logger config outside conf/ that would have Hydra make the folder ``marker``; its name for logger=."""
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"made": {"_target_": "os.mkdir", "path": str(marker)}}), folder / "crafted.yaml")
    return os.path.relpath(folder / "crafted", config_dir() / "logger")


@pytest.mark.parametrize("crafted", [
    "+callbacks.evil={{_target_:os.mkdir,path:'{marker}'}}",
    "+hydra.callbacks.evil={{_target_:os.mkdir,path:'{marker}'}}",
    "model.arch='${{oc.create:{{_target_: os.mkdir, path: {marker}}}}}'",
    "logger={outside}",  # a config file outside conf/
    "model.optimizer._target_=os.mkdir",
    "hydra/launcher=basic",
])
def test_saved_overrides_that_would_choose_what_gets_called_are_refused(run, tmp_path, monkeypatch, capsys, crafted):
    """A run folder is data: a crafted line in its overrides.yaml is not replayed, and nothing of it is called."""
    marker = tmp_path / "called"
    line = crafted.format(marker=marker, outside=crafted_config(tmp_path / "elsewhere", marker))
    overrides = run / ".hydra" / "overrides.yaml"
    OmegaConf.save(OmegaConf.create([*OmegaConf.load(overrides), line]), overrides)
    before = files_of(run)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["abn-train", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    GlobalHydra.instance().clear()
    try:
        with pytest.raises(SystemExit) as exited:
            train_cli.main()  # its message is what the console shows
    finally:
        GlobalHydra.instance().clear()
    message = str(exited.value.code)
    assert f"{overrides} holds the override {line!r}" in message and "type it again with ckpt_path=" in message
    assert not marker.exists() and "Resuming" not in capsys.readouterr().out
    assert files_of(run) == before


def test_a_saved_override_typed_again_is_the_user_s_own(run, tmp_path, monkeypatch, capsys):
    """What the user types replaces the saved line: the resume goes on with the typed value."""
    overrides = run / ".hydra" / "overrides.yaml"
    OmegaConf.save(OmegaConf.create([*OmegaConf.load(overrides), "model.optimizer._target_=os.mkdir"]), overrides)
    arguments = [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "model.optimizer._target_=torch.optim.SGD",
                 "train=false", "test=false"]
    _, printed, _ = run_cli(train_cli.main, arguments, tmp_path, monkeypatch, capsys)
    assert f"Resuming the run in {run}" in printed


@pytest.mark.parametrize("line", [
    "model.head=baseline", "logger=none", "model/scheduler=cosine", "experiment=fashion_mnist", "data=folder",
    "paths.root_dir='/some where'", "+trainer.limit_train_batches=2", "~logger", "model.model_kwargs={dropout:0.3}",
    "data._target_=abn.data.FolderDataModule", "model.scheduler._target_=torch.optim.lr_scheduler.MultiStepLR",
    "data.root=${paths.data_dir}/mine", "data.num_workers=${abn.workers:4}",
])
def test_what_abn_train_saves_is_replayed(line):
    """Settings, options of this project's config groups and the classes its configs name pass the check."""
    (override,) = OverridesParser.create().parse_overrides([line])
    assert refusal(override) is None


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
