"""trainer.precision=auto and model.channels_last=auto: what is chosen, why, and that it is kept (abn.speed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import abn.speed as speed
from abn.models import create_model
from abn.speed import cache_file, choose_channels_last, choose_precision, seconds_per_step

from .conftest import TINY_SHAPES, train_once

CPU = torch.device("cpu")


def test_an_explicit_precision_wins():
    assert choose_precision("16-mixed", CPU) == ("16-mixed", "set in the config")


@pytest.mark.parametrize("amx, avx512_bf16, chosen", [(False, False, "32-true"), (True, False, "bf16-mixed"),
                                                     (False, True, "bf16-mixed")])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch, amx, avx512_bf16, chosen):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    precision, reason = choose_precision("auto", CPU)
    assert precision == chosen
    assert ("emulated" in reason) == (chosen == "32-true") and ("AMX" in reason or "AVX-512" in reason)


def tiny_net() -> torch.nn.Module:
    return create_model("resnet20", "abn", num_classes=4, in_chans=3)


@pytest.mark.parametrize("timings, chosen", [((1.0, 0.5), True), ((1.0, 0.99), False), ((0.5, 1.0), False)])
def test_auto_memory_format_keeps_nhwc_only_where_it_measured_faster(monkeypatch, tmp_path, timings, chosen):
    monkeypatch.setenv("ABN_CACHE_DIR", str(tmp_path))
    measured = []
    monkeypatch.setattr(speed, "seconds_per_step", lambda *args: measured.append(args) or timings)
    first = choose_channels_last("auto", tiny_net(), (64, 3, 32, 32), CPU, "32-true")
    assert first[0] is chosen and f"NHWC trained {timings[0] / timings[1]:.2f}× as fast as NCHW" in first[1]
    again = choose_channels_last("auto", tiny_net(), (64, 3, 32, 32), CPU, "32-true")
    assert len(measured) == 1 and again[0] is chosen and f"kept in {cache_file()}" in again[1]
    assert measured[0][1] == (speed.MEASURED_BATCH, 3, 32, 32)  # a run's batch is measured in 32-image steps
    choose_channels_last("auto", tiny_net(), (64, 3, 40, 40), CPU, "32-true")  # another input: measured anew
    assert len(measured) == 2 and len(json.loads(cache_file().read_text())) == 2
    assert choose_channels_last(False, tiny_net(), (64, 3, 32, 32), CPU, "32-true") == (False, "set in the config")


def test_an_unreadable_cache_is_measured_again(monkeypatch, tmp_path):
    monkeypatch.setenv("ABN_CACHE_DIR", str(tmp_path))
    cache_file().write_text("{not json")
    monkeypatch.setattr(speed, "seconds_per_step", lambda *args: (1.0, 0.5))
    assert choose_channels_last("auto", tiny_net(), (8, 3, 32, 32), CPU, "32-true")[0] is True
    assert len(json.loads(cache_file().read_text())) == 1


def test_measuring_leaves_the_network_as_it_was():
    net = tiny_net()
    before = {name: value.clone() for name, value in net.state_dict().items()}
    nchw, nhwc = seconds_per_step(net, (4, 3, 32, 32), CPU, "32-true", rounds=1)
    assert nchw > 0 and nhwc > 0 and math.isfinite(nchw / nhwc)
    assert all(torch.equal(before[name], value) for name, value in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters()) and net.training
    assert next(net.parameters()).is_contiguous()  # still NCHW


def test_abn_train_says_what_it_chose_and_records_it(tmp_path: Path, capfd):
    run = train_once(tmp_path, [*TINY_SHAPES, "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
                                "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
                                "callbacks.attention_images=null"])
    printed = capfd.readouterr()
    log = (run / "train.log").read_text() if (run / "train.log").exists() else printed.out + printed.err
    assert "Precision 32-true: " in log or "Precision bf16-mixed: " in log
    assert "Memory format NHWC (channels_last): " in log or "Memory format NCHW: " in log
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert isinstance(saved["hyper_parameters"]["channels_last"], bool)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    (events,) = {path.parent for path in run.rglob("events.out.tfevents.*")}
    content = EventAccumulator(str(events)).Reload().PluginTagToContent("hparams")
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert hparams.hparams["trainer.precision"].string_value in ("32-true", "bf16-mixed")
    assert hparams.hparams["model.channels_last"].number_value == saved["hyper_parameters"]["channels_last"]  # 1: true
