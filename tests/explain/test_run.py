"""abn-explain end to end on a tiny trained checkpoint, its bad inputs, and the training callback's grid."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from abn.explain import METHODS
from abn.explain.run import TABLE_COLUMNS, run_explain
from abn.train import train
from tests.conftest import TINY_SHAPES, compose_train_config
from tests.test_train import _events


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """An ABN trained one epoch on a few shapes, saved as abn-train saves a run (checkpoint + .hydra/config.yaml)."""
    run = tmp_path_factory.mktemp("run")
    cfg = compose_train_config(run, TINY_SHAPES + ["trainer.max_epochs=1", "logger=none"])
    (run / ".hydra").mkdir()  # Hydra saves the config before the run starts
    OmegaConf.save({key: cfg[key] for key in cfg if key != "hydra"}, run / ".hydra" / "config.yaml")
    train(cfg)
    GlobalHydra.instance().clear()
    return run


def explain_config(tmp_path: Path, run: Path, overrides: list[str]):
    cfg = compose_train_config(tmp_path, [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "batch_size=16",
                                          "metrics.deletion_steps=4", *overrides], config_name="explain")
    GlobalHydra.instance().clear()
    return cfg


def test_explains_scores_and_writes_grids_tables_and_tensorboard(tmp_path, trained_run):
    result = run_explain(explain_config(tmp_path, trained_run, ["grid_images=4", "batch_size=8", "num_batches=2",
                                                                "metrics.deletion_steps=2"]))
    assert [row["method"] for row in result["rows"]] == list(METHODS)  # an ABN: every method applies
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == list(METHODS)
    for row in rows:
        for column in TABLE_COLUMNS:
            assert 0.0 <= float(row[column]) <= 1.0, (row["method"], column)
    markdown = (tmp_path / "metrics.md").read_text()
    assert "| relevance_cam | default |" in markdown and "test split, 16 images" in markdown
    assert "Pointing game tolerance 2.1 px" in markdown  # 15 px at 224 px, scaled to 32 px
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["images"] == 16 and 0 <= summary["acc"] <= 1 and "acc_att" in summary
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == ["test_batch_000.png", "test_batch_001.png"]
    events = _events(tmp_path / "tensorboard")
    assert len(events.Images("explain/test")) == 2
    assert "explain/gradcam/pointing_game" in events.Tags()["scalars"]
    assert "explain/metrics/text_summary" in events.Tags()["tensors"]  # the Markdown table, in the TEXT tab


def test_several_layers_give_a_row_each_and_localisation_only(tmp_path, trained_run):
    cfg = explain_config(tmp_path, trained_run, ["methods=[gradcam,relevance_cam,abn]", "layers=[features.layer2,last_stage]", "num_batches=1",
                                                 "metrics.faithfulness=false", "grid_batches=0", "tensorboard=false"])
    rows = run_explain(cfg)["rows"]
    assert [(r["method"], r["layer"]) for r in rows] == [
        ("gradcam", "features.layer2"), ("gradcam", "last_stage"), ("relevance_cam", "features.layer2"),
        ("relevance_cam", "last_stage"), ("abn", "default")]
    assert "deletion_auc" not in rows[0] and "pointing_game" in rows[0]
    assert not list((tmp_path / "grids").iterdir()) and not (tmp_path / "tensorboard").exists()


def test_progress_says_how_much_is_left(tmp_path, trained_run, caplog):
    """A long explanation run says after each batch how far it is and how long the rest will take."""
    cfg = explain_config(tmp_path, trained_run, ["methods=[abn]", "batch_size=4", "num_batches=3", "grid_batches=0",
                                                 "tensorboard=false", "metrics.faithfulness=false"])
    with caplog.at_level("INFO", logger="abn"):
        run_explain(cfg)
    progress = [record.getMessage() for record in caplog.records if record.getMessage().startswith("explained ")]
    assert [message.split(" in ")[0] for message in progress] == ["explained 1/3 batches", "explained 2/3 batches"]
    assert "min left (num_batches=<n> explains fewer)" in progress[-1]


def test_other_data_can_be_named(tmp_path, trained_run):
    cfg = explain_config(tmp_path, trained_run, ["data=shapes", "data.test_size=16", "methods=[abn]", "split=val", "num_batches=1",
                                                 "data.val_size=16"])
    assert run_explain(cfg)["accuracy"]["acc"] >= 0


def test_bad_inputs(tmp_path, trained_run):
    checkpoint = trained_run / "checkpoints" / "last.ckpt"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_explain(explain_config(tmp_path, trained_run, [f"ckpt_path={tmp_path / 'missing.ckpt'}"]))
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable Lightning checkpoint"):
        run_explain(explain_config(tmp_path, trained_run, [f"ckpt_path={garbage}"]))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 0.1}}, foreign)
    with pytest.raises(ValueError, match="holds no abn model settings"):
        run_explain(explain_config(tmp_path, trained_run, [f"ckpt_path={foreign}"]))
    other_model = tmp_path / "other.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    saved["hyper_parameters"]["arch"] = "resnet32"
    torch.save(saved, other_model)
    with pytest.raises(ValueError, match="weights do not fit the model.*resnet32"):
        run_explain(explain_config(tmp_path, trained_run, [f"ckpt_path={other_model}"]))
    lonely = tmp_path / "lonely" / "checkpoints"
    lonely.mkdir(parents=True)
    (lonely / "last.ckpt").write_bytes(checkpoint.read_bytes())
    with pytest.raises(FileNotFoundError, match="no training config.*data=<name>"):
        run_explain(explain_config(tmp_path, trained_run, [f"ckpt_path={lonely / 'last.ckpt'}"]))
    with pytest.raises(ValueError, match="8 classes.*the data 5"):
        run_explain(explain_config(tmp_path, trained_run, ["data=shapes", "data.num_classes=5"]))
    with pytest.raises(ValueError, match="methods nonsense do not apply.*methods that apply: abn, abn_class, cam"):
        run_explain(explain_config(tmp_path, trained_run, ["methods=[nonsense]"]))
    with pytest.raises(ValueError, match="split must be val or test"):
        run_explain(explain_config(tmp_path, trained_run, ["split=train"]))
    assert not list(tmp_path.rglob("metrics.csv"))  # nothing was written for any of them


def test_cli_requires_a_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "-m", "abn.explain.run", f"hydra.run.dir={tmp_path}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "ckpt_path" in result.stderr


def test_training_callback_logs_the_side_by_side_explanations(tmp_path):
    overrides = TINY_SHAPES + ["trainer.max_epochs=1", "callbacks.attention_images.num_images=3",
                               "callbacks.attention_images.methods=[abn,cam,gradcam,relevance_cam]"]
    train(compose_train_config(tmp_path, overrides))
    GlobalHydra.instance().clear()
    grids = _events(tmp_path / "tensorboard").Images("val/explanations")
    assert len(grids) == 1
    # input + 4 methods: 32-px inputs shown at 96 px under titles and a caption, beside a colour bar
    assert 3 * 96 + 40 <= grids[0].height <= 600 and 5 * 96 + 50 <= grids[0].width <= 800


def test_callback_refuses_an_unknown_method():
    from abn.callbacks import AttentionImageLogger

    with pytest.raises(ValueError, match="unknown explanation method.*gradcam\\+\\+"):
        AttentionImageLogger(methods=["gradcam+"])
