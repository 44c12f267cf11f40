"""What users see when a command fails, the run's log, and ``--help``."""

from __future__ import annotations

import pytest

import abn.explain.run as explain_cli
import abn.train as train_cli

from .conftest import TINY_SHAPES, run_cli

MISSING_ROOT = ["data=folder", "data.root=/nonexistent/images"]


def test_a_missing_data_root_prints_the_message_only_and_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    code, _, error = run_cli(train_cli.main, MISSING_ROOT, tmp_path, monkeypatch, capsys, expect_success=False)
    assert code == 1
    assert "data.root=/nonexistent/images does not exist" in error
    assert "Traceback" not in error and "File \"" not in error
    assert not list((tmp_path / "logs" / "train" / "runs").iterdir())


def test_full_error_keeps_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_cli(train_cli.main, MISSING_ROOT, tmp_path, monkeypatch, capsys)


def test_each_failed_job_of_a_sweep_is_named_and_the_others_run(tmp_path, monkeypatch, capsys):
    arguments = ["-m", *TINY_SHAPES, "data.image_size=8,32", "trainer.max_epochs=1", "callbacks=none", "logger=none"]
    code, printed, error = run_cli(train_cli.main, arguments, tmp_path, monkeypatch, capsys, expect_success=False)
    assert code == 1
    assert "This job failed: image_size must be at least 16 pixels, got 8" in printed
    assert "Training finished." in printed  # the second job ran
    assert "Traceback" not in error


def test_the_run_log_holds_lightnings_messages_and_the_summary(tmp_path, monkeypatch, capsys):
    run_cli(train_cli.main, [*TINY_SHAPES, "trainer.max_epochs=1", "callbacks=none"], tmp_path, monkeypatch, capsys)
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    log = (run / "train.log").read_text()
    assert "GPU available" in log  # Lightning's own line
    assert "Training finished." in log and "test accuracy, perception branch" in log


def test_explain_reports_a_missing_checkpoint_in_one_message(tmp_path, monkeypatch, capsys):
    code, _, error = run_cli(explain_cli.main, [f"ckpt_path={tmp_path / 'nope.ckpt'}"], tmp_path, monkeypatch, capsys,
                             expect_success=False)
    assert code == 1 and "nope.ckpt does not exist" in error and "Traceback" not in error
    assert not list((tmp_path / "logs" / "explain" / "runs").iterdir())


def test_help_lists_the_valid_archs_heads_and_data_sets(tmp_path, monkeypatch, capsys):
    _, printed, _ = run_cli(train_cli.main, ["--help"], tmp_path, monkeypatch, capsys)
    assert "model.arch: " in printed and "resnet110_bottleneck" in printed and "torchvision:<name>" in printed
    assert "model.head: baseline, cam, abn" in printed
    assert "cluttered_fashion_mnist" in printed and "cifar100_resnet110" in printed
    _, printed, _ = run_cli(explain_cli.main, ["--help"], tmp_path, monkeypatch, capsys)
    assert "relevance_cam" in printed


def test_sync_batchnorm_on_the_cpu_says_to_leave_it_to_the_device(tmp_path, monkeypatch, capsys):
    arguments = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.sync_batchnorm=true"]
    code, _, error = run_cli(train_cli.main, arguments, tmp_path, monkeypatch, capsys, expect_success=False)
    assert code == 1 and "trainer.sync_batchnorm=auto (synced on GPUs only)" in error and "Traceback" not in error


def test_an_unreachable_download_prints_the_message_only(tmp_path, monkeypatch, capsys):
    from urllib.error import URLError

    from torchvision import datasets

    def offline(self):
        raise URLError("no network")

    monkeypatch.setattr(datasets.FashionMNIST, "download", offline)
    code, _, error = run_cli(train_cli.main, ["data=fashion_mnist", "+data.search_dirs=[]"], tmp_path, monkeypatch,
                             capsys, expect_success=False)
    assert code == 1 and "downloading it failed" in error and "no network" in error
    assert "apt-get install dataset-fashion-mnist" in error and "Traceback" not in error
    assert not list((tmp_path / "logs" / "train" / "runs").iterdir())
