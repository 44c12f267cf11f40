"""scripts/bench_train.py runs end to end (its figures are printed, never asserted: this is no timed test)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from .conftest import SCRIPTS

TINY = ["--steps", "1", "--warmup", "0", "--repeats", "1", "--batch-size", "2", "--device", "cpu"]


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / "bench_train.py"), *args], capture_output=True, text=True,
                          timeout=600)


def fake_official_repo(root: Path) -> Path:
    """A stand-in for the official repository: models/cifar/resnet.py with its interface (returns att, logits, map)."""
    (root / "models" / "cifar").mkdir(parents=True)
    (root / "models" / "cifar" / "resnet.py").write_text(textwrap.dedent("""
        from abn.models import create_model

        def resnet(depth, num_classes):
            net = create_model(f"resnet{depth}", head="abn", num_classes=num_classes)
            def forward(x):
                out = net.__class__.forward(net, x)
                return out.att_logits, out.logits, out.attention
            net.forward = forward
            return net
    """))
    return root


def test_heads_official_and_switch_tables(tmp_path):
    result = run_bench("--arch", "resnet20", *TINY, "--light", "--official-repo", str(fake_official_repo(tmp_path)),
                       "--switches", "channels_last", "bf16")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    heads = [line for line in lines if line.startswith("| resnet20 | 32 | ")][:3]
    names_and_sizes = [row.split(" | ")[2:4] for row in heads]
    assert names_and_sizes == [["baseline", "0.27 M"], ["ABN", "0.48 M"], ["ABN, light branch", "0.33 M"]]
    official = next(line for line in lines if line.startswith("| resnet20 | 32 | 479,150 | 479,150 | 93 M | 93 M |"))
    switches = [line for line in lines if line.startswith("| resnet20 |")][-1]
    assert official != switches and switches.count("|") == 5 and "(×" in switches


def test_a_wrong_official_repo_is_named(tmp_path):
    result = run_bench("--arch", "resnet20", *TINY, "--no-heads", "--official-repo", str(tmp_path))
    assert result.returncode != 0 and "must be a checkout of" in result.stderr


def test_ours_at_the_default_settings_against_the_official_code(tmp_path, monkeypatch):
    monkeypatch.setenv("ABN_CACHE_DIR", str(tmp_path / "cache"))
    result = run_bench("--arch", "resnet20", *TINY, "--no-heads", "--official-repo",
                       str(fake_official_repo(tmp_path / "repo")), "--defaults")
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("| resnet20 | 32 | fp32, N")
              or line.startswith("| resnet20 | 32 | bf16 autocast, N")]
    assert row.count("|") == 7 and "(" in row.split(" | ")[-1]
    assert (tmp_path / "cache" / "memory_formats.json").is_file()  # the memory format abn-train would choose


def test_achieved_flops_as_a_share_of_the_matmul_peak():
    result = run_bench("--arch", "resnet20", *TINY, "--no-heads", "--peak", "--peak-size", "128")
    assert result.returncode == 0, result.stderr
    assert "matmul peak (128×128, best of 5 before and 5 after): fp32 " in result.stdout and " GFLOP/s, bf16 " in result.stdout
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| resnet20 | 32 | ")]
    assert [row[2] for row in rows] == ["fp32, NCHW", "fp32, NHWC", "bf16, NCHW", "bf16, NHWC"]
    forward = 2 * 93.5e6  # FLOPs of one forward pass of the ResNet-20 ABN (docs/models.md: 93.5 M MACs)
    for row in rows:  # a training step: the forward pass and a backward pass of about twice its cost
        assert 2.5 * forward < float(row[4]) * 1e9 < 3.5 * forward, row
        assert row[6].endswith(f"% of {row[2][:4]} |")
