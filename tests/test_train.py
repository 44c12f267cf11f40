"""`abn-train` end to end: composed configs, TensorBoard contents, multirun, and the errors users see."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from abn.checkpoints import check_resume_checkpoint
from abn.config import MAX_JOB_FOLDER
from abn.module import ABNModule
from abn.train import train

from .conftest import TINY_SHAPES, compose_train_config, run_cli

HEADS = ["baseline", "cam", "abn"]


@pytest.mark.parametrize("head", HEADS)
def test_fast_dev_run_on_shapes(tmp_path, head):
    cfg = compose_train_config(tmp_path, TINY_SHAPES + [f"model.head={head}", "trainer.fast_dev_run=true"])
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert ("test/acc_att" in metrics) == (head == "abn")


@pytest.mark.parametrize("head", HEADS)
def test_fast_dev_run_on_fashion_mnist(tmp_path, head, fashion_mnist_system_copy):
    overrides = [
        "experiment=fashion_mnist",
        f"model.head={head}",
        "trainer.fast_dev_run=true",
        f"+data.search_dirs=[{fashion_mnist_system_copy}]",
        "data.download=false",
        "data.val_size=20",
        "data.num_workers=0",
        "data.batch_size=8",
    ]
    cfg = compose_train_config(tmp_path, overrides)
    assert cfg.model.in_chans == 1 and cfg.model.num_classes == 10
    metrics = train(cfg)
    assert ("test/acc_att" in metrics) == (head == "abn")


def _events(directory: Path) -> EventAccumulator:
    files = list(directory.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {directory}"
    accumulator = EventAccumulator(str(files[0].parent), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_holds_the_image_grid_the_hparams_and_real_metrics(tmp_path):
    overrides = TINY_SHAPES + ["trainer.max_epochs=2", "trainer.log_every_n_steps=1", "callbacks.attention_images.num_images=4"]
    cfg = compose_train_config(tmp_path, overrides)
    metrics = train(cfg)
    events = _events(tmp_path / "tensorboard")

    grids = events.Images("val/attention")
    assert [g.step for g in grids] == [4, 8]  # every epoch: 64 images / batch 16
    # 4 rows (images) × 5 columns (input | ABN map | on input | CAM | on input), 32-pixel inputs shown at 96 px,
    # under column titles and a caption, beside a colour bar: RGB, readable, still one screen
    from io import BytesIO

    from PIL import Image

    assert Image.open(BytesIO(grids[-1].encoded_image_string)).mode == "RGB"
    assert 4 * 96 + 40 <= grids[-1].height <= 700 and 5 * 96 + 50 <= grids[-1].width <= 800

    tags = events.Tags()["scalars"]
    for tag in ["train/loss_att_step", "train/loss_per_step", "val/acc", "val/acc_att", "test/acc", "lr-SGD"]:
        assert tag in tags
    assert "hp_metric" not in tags

    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"hp/test_acc", "hp/test_acc_att", "hp/val_acc"} <= metric_tags
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["model.head"].string_value == "abn"
    assert session.hparams["model.arch"].string_value == "resnet20"
    assert events.Scalars("hp/test_acc")[-1].value == pytest.approx(metrics["test/acc"])

    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    reloaded = ABNModule.load_from_checkpoint(last, weights_only=True)
    assert reloaded.hparams.head == "abn"


def test_callbacks_and_logger_can_be_switched_off(tmp_path):
    cfg = compose_train_config(tmp_path, TINY_SHAPES + ["callbacks=none", "logger=none", "trainer.max_epochs=1"])
    train(cfg)
    assert not list(tmp_path.rglob("events.out.tfevents.*"))
    assert not list(tmp_path.rglob("last.ckpt"))  # only Lightning's own default checkpoint remains


def test_unknown_config_key_is_a_hydra_error(tmp_path):
    with pytest.raises(ConfigCompositionException, match="model.nonexistent"):
        compose_train_config(tmp_path, ["model.nonexistent=3"])


def test_unknown_data_set_lists_the_valid_ones(tmp_path):
    with pytest.raises(MissingConfigException) as error:
        compose_train_config(tmp_path, ["data=cifar1000"])
    assert "fashion_mnist" in str(error.value) and "shapes" in str(error.value)


def test_unknown_arch_lists_the_valid_ones(tmp_path):
    cfg = compose_train_config(tmp_path, ["model.arch=resnet21"])
    with pytest.raises(Exception, match="valid archs: .*resnet110_bottleneck"):
        instantiate(cfg.model)


def _run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """The installed console script ``abn-train`` (``python -m abn.train`` where it is not on disk)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    script = Path(sys.executable).with_name("abn-train")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "abn.train"]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_reports_a_bad_head_in_one_line(tmp_path):
    result = _run_cli(["model.head=gradcam"], tmp_path)
    assert result.returncode != 0
    assert "valid heads: baseline, cam, abn" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "logs" / "train" / "runs").iterdir())  # no empty run folder left behind


def test_multirun_as_documented_gives_each_job_its_own_folder_and_tensorboard_run(tmp_path):
    """The README's sweep, started from any folder, without setting hydra.sweep.dir; job folders are short names
    that ckpt_path= takes unquoted."""
    args = ["-m", "model.head=baseline,abn", "trainer.max_epochs=1", "callbacks.attention_images.num_images=2",
            *TINY_SHAPES]
    result = _run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2 and jobs[0].startswith("0_") and jobs[1].startswith("1_")
    assert not any(character in job for job in jobs for character in "=,[]")
    assert all(len(job) <= 2 + MAX_JOB_FOLDER for job in jobs)  # many overrides: cut, with a hash
    assert [OmegaConf.load(sweep / job / ".hydra" / "overrides.yaml")[0] for job in jobs] == \
        ["model.head=baseline", "model.head=abn"]
    heads = []
    for job in jobs:
        events = _events(sweep / job / "tensorboard")
        content = events.PluginTagToContent("hparams")
        session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        heads.append(session.session_start_info.hparams["model.head"].string_value)
        assert "hp/test_acc" in events.Tags()["scalars"]
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        assert "Training finished." in (sweep / job / "train.log").read_text()
    assert heads == ["baseline", "abn"]
    assert "Training finished." in result.stdout
    assert f"abn-train ckpt_path={sweep / jobs[1] / 'checkpoints' / 'last.ckpt'}" in result.stdout


def test_resume_checks_the_checkpoint_first(tmp_path):
    cfg = compose_train_config(tmp_path / "first", TINY_SHAPES + ["trainer.max_epochs=1", "model/scheduler=multistep"])
    train(cfg)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    other = compose_train_config(tmp_path / "second", TINY_SHAPES + [f"ckpt_path={last}", "model.arch=resnet32"])
    with pytest.raises(ValueError, match="another model .*arch: checkpoint 'resnet20' vs config 'resnet32'"):
        train(other)
    missing = compose_train_config(tmp_path / "third", TINY_SHAPES + [f"ckpt_path={tmp_path / 'nope.ckpt'}"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(missing)
    assert last.read_bytes() == before  # nothing on disk was touched

    # a schedule not sized to the run (multistep) can be continued for longer
    resumed = compose_train_config(tmp_path / "fourth", TINY_SHAPES + [f"ckpt_path={last}", "trainer.max_epochs=2",
                                                                      "model/scheduler=multistep"])
    assert "test/acc" in train(resumed)


def test_resume_accepts_a_checkpoint_written_before_the_model_options_existed(tmp_path):
    """Checkpoints of the first release hold no split, branch_depth or model_kwargs: they mean None, full, {}."""
    old = tmp_path / "old.ckpt"
    torch.save({"hyper_parameters": {"arch": "resnet20", "head": "abn", "num_classes": 3, "in_chans": 3},
                "optimizer_states": [{}]}, old)
    check_resume_checkpoint(str(old), ABNModule(arch="resnet20", head="abn", num_classes=3, model_kwargs={}))
    with pytest.raises(ValueError, match="branch_depth: checkpoint 'full' vs config 'light'"):
        check_resume_checkpoint(str(old), ABNModule(arch="resnet20", head="abn", num_classes=3, branch_depth="light"))


def test_last_ckpt_is_the_last_epoch_and_step_however_the_best_epoch_did(tmp_path, monkeypatch, caplog):
    """``abn-train ckpt_path=<run>/checkpoints/last.ckpt`` continues where the run stopped, also after epochs that did
    not beat the best. Here the best is chosen on a value that never improves after the first epoch (``epoch``, mode
    min), as val/acc does when a run stops improving; ``step_checkpoint`` also rewrites last.ckpt every 3 steps."""
    from abn.checkpoint_io import AtomicCheckpointIO

    saved = []
    real_save = AtomicCheckpointIO.save_checkpoint

    def recording_save(self, checkpoint, path, storage_options=None):
        saved.append((Path(path).name, checkpoint["global_step"]))
        real_save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", recording_save)
    overrides = [*TINY_SHAPES, "data.val_size=16", "trainer.max_epochs=2", "test=false", "logger=none",
                 "callbacks.attention_images=null", "callbacks.model_checkpoint.monitor=epoch",
                 "callbacks.model_checkpoint.mode=min", "callbacks.step_checkpoint.every_n_train_steps=3"]
    with caplog.at_level(logging.INFO, logger="abn"):
        train(compose_train_config(tmp_path, overrides))

    folder = tmp_path / "checkpoints"
    assert sorted(path.name for path in folder.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 8)  # the second epoch's end (4 steps an epoch)
    assert torch.load(folder / "epoch_000.ckpt", map_location="cpu", weights_only=True)["global_step"] == 4
    assert [step for name, step in saved if name == "last.ckpt"] == [3, 4, 6, 8]
    assert f"checkpoint:       {folder / 'last.ckpt'}\n" in caplog.text
    assert f"resume it with:   abn-train ckpt_path={folder / 'last.ckpt'}\n" in caplog.text
    assert f"best epoch:       {folder / 'epoch_000.ckpt'}" in caplog.text


def test_two_runs_started_in_the_same_second_keep_their_own_folders(tmp_path, monkeypatch, capsys):
    import hydra.core.utils

    import abn.train as train_cli

    from .test_config import FrozenClock

    monkeypatch.setattr(hydra.core.utils, "datetime", FrozenClock)
    common = ["data.train_size=32", "data.val_size=16", "test=false", "trainer.max_epochs=1", "logger=none",
              "callbacks.attention_images=null"]
    for head in ("baseline", "abn"):
        run_cli(train_cli.main, [f"model.head={head}", *common], tmp_path, monkeypatch, capsys)

    runs = tmp_path / "logs" / "train" / "runs"
    assert sorted(run.name for run in runs.iterdir()) == ["2026-01-01_12-00-00", "2026-01-01_12-00-00_2"]
    for run, head in zip(sorted(runs.iterdir()), ("baseline", "abn")):
        assert OmegaConf.load(run / ".hydra" / "config.yaml").model.head == head
        checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert checkpoint["hyper_parameters"]["head"] == head


def test_the_console_shows_tqdm_and_the_plain_summary_even_where_rich_is_installed():
    from lightning.pytorch.callbacks import ModelSummary, RichProgressBar, TQDMProgressBar
    from omegaconf import OmegaConf

    from abn.train import plain_console_callbacks

    added = plain_console_callbacks([], OmegaConf.create({}))
    assert [type(callback) for callback in added] == [TQDMProgressBar, ModelSummary]
    chosen = plain_console_callbacks([RichProgressBar()], OmegaConf.create({"enable_model_summary": False}))
    assert chosen == []  # a bar the config chose stays; a summary switched off is not added
