"""abn-train refuses a setting of the wrong type or range with one message naming it and an example, before any
data is read or any folder kept (the tester's cases: data.batch_size=abc, seed=abc, trainer.max_epochs=0/-1/1.5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from abn.train import main

from .conftest import TINY_SHAPES, run_cli


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=abc", "data.batch_size='abc': must be a positive integer, e.g. data.batch_size=64"),
    ("data.batch_size=0", "data.batch_size=0: must be a positive integer"),
    ("seed=abc", "seed='abc': must be an integer or null, e.g. seed=0"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0: must be a positive integer, e.g. trainer.max_epochs=30 (0 trains "
                             "nothing and -1 never stops; to test a checkpoint without training give ckpt_path="),
    ("trainer.max_epochs=-1", "trainer.max_epochs=-1: must be a positive integer"),
    ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5: must be a positive integer"),
    ("model.optimizer.lr=abc", "model.optimizer.lr='abc': must be a number > 0"),
    ("model.optimizer.lr=-0.1", "model.optimizer.lr=-0.1: must be a number > 0"),
    ("model.optimizer.weight_decay=nan", "model.optimizer.weight_decay=nan: must be a number ≥ 0"),
])
def test_a_wrong_value_is_named_with_an_example_and_leaves_no_folder(override, message, tmp_path: Path, monkeypatch,
                                                                      capsys):
    code, out, err = run_cli(main, [*TINY_SHAPES, override], tmp_path, monkeypatch, capsys, expect_success=False)
    assert code != 0 and message in out + err
    assert "Traceback" not in out + err
    assert not (tmp_path / "logs" / "train" / "runs").exists() or not any((tmp_path / "logs" / "train" / "runs").iterdir())


def test_endless_epochs_with_a_step_limit_are_accepted(tmp_path: Path, monkeypatch, capsys):
    """-1 epochs is Lightning's "no epoch limit": right when trainer.max_steps ends the run."""
    code, out, err = run_cli(main, [*TINY_SHAPES, "trainer.max_epochs=-1", "trainer.max_steps=3",
                                    "callbacks.attention_images=null"], tmp_path, monkeypatch, capsys)
    assert "Training finished" in out + err
