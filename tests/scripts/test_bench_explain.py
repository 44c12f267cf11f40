"""scripts/bench_explain.py runs end to end and prints its table and the Grad-CAM line (figures never asserted)."""

from __future__ import annotations

import re

import pytest

from abn.explain import applicable_methods
from abn.models import create_model

from .conftest import load_script

TINY = ["--repeats", "1", "--warmup", "0", "--batch-size", "2", "--device", "cpu"]
SPEEDUP = re.compile(r"^Grad-CAM at the last stage \((\w+)\) of (\S+) at (\d+) px vs forward \+ full backward, "
                     r"batch 2: (\d+\.\d)× faster \(required ≥ 2\.5×\)(?: — below the requirement)?; "
                     r"rounds \d+\.\d–\d+\.\d×$")


def table_rows(output: str) -> list[list[str]]:
    lines = [line for line in output.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]


def run_main(capsys, *args: str) -> tuple[str, str]:
    load_script("bench_explain").main(list(args))
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_a_row_per_method_and_reference_and_the_speedup_line(capsys):
    out, _ = run_main(capsys, "--models", "resnet20:abn", "--methods", "gradcam", "abn",
                      "--gradcam-models", "resnet20:abn", *TINY)
    assert out.startswith("device: CPU; torch ")
    header, rule, *rows = table_rows(out)
    assert header == ["model", "input", "method", "ms/batch", "images/s", "cost vs forward",
                      "speed-up vs forward+backward"]
    assert rule == ["---"] * 7
    assert [row[:3] for row in rows] == [["resnet20:abn", "32", name] for name in
                                         ("forward", "forward+backward", "gradcam", "abn")]
    for row in rows:
        assert len(row) == 7
        milliseconds, images_per_second = (float(cell.replace(",", "")) for cell in row[3:5])
        assert milliseconds > 0 and images_per_second > 0
        assert all(re.fullmatch(r"\d+\.\d\d×", cell) for cell in row[5:])
    assert rows[0][5] == "1.00×" and rows[1][6] == "1.00×"  # each reference against itself
    lines = [line for line in out.splitlines() if line.startswith("Grad-CAM")]
    assert len(lines) == 1
    assert SPEEDUP.match(lines[0]).groups()[:3] == ("last_stage", "resnet20:abn", "32")


def test_default_methods_are_the_applicable_ones(capsys):
    out, _ = run_main(capsys, "--models", "resnet20:baseline", "--gradcam-models", *TINY)
    applicable = applicable_methods(create_model("resnet20", head="baseline", num_classes=10))
    assert "abn" not in applicable and "gradcam" in applicable
    assert [row[2] for row in table_rows(out)[2:]] == ["forward", "forward+backward", *applicable]
    assert "Grad-CAM" not in out  # no --gradcam-models: no line


def test_a_method_named_that_does_not_apply_gets_a_row_saying_so(capsys):
    out, _ = run_main(capsys, "--models", "resnet20:cam", "--methods", "abn", "cam", "--gradcam-models", *TINY)
    rows = table_rows(out)[2:]
    assert [row[2] for row in rows] == ["forward", "forward+backward", "abn", "cam"]
    assert rows[2][3].startswith("does not apply: needs an attention branch") and len(rows[2]) == 7
    assert float(rows[3][3].replace(",", "")) > 0


def test_gradcam_model_outside_the_table_is_timed_for_the_line(capsys):
    out, _ = run_main(capsys, "--models", "resnet20:cam", "--methods", "random", "--gradcam-models", "resnet20:baseline",
                      *TINY)
    assert [row[2] for row in table_rows(out)[2:]] == ["forward", "forward+backward", "random"]
    line = next(line for line in out.splitlines() if line.startswith("Grad-CAM"))
    assert SPEEDUP.match(line).groups()[:3] == ("last_stage", "resnet20:baseline", "32")


def test_check_gradcam_speedup_sets_the_exit_code(capsys):
    common = ["--models", "resnet20:cam", "--methods", "gradcam", "--gradcam-models", "resnet20:cam", *TINY]
    run_main(capsys, *common, "--check-gradcam-speedup", "--required-speedup", "0")  # any speed-up passes
    with pytest.raises(SystemExit) as exit_info:
        run_main(capsys, *common, "--check-gradcam-speedup", "--required-speedup", "1e9")
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "— below the requirement" in captured.out and "resnet20:cam" in captured.err
    run_main(capsys, *common, "--required-speedup", "1e9")  # without the flag it only reports


def test_a_failing_method_is_reported_and_the_others_still_run(capsys, monkeypatch):
    script = load_script("bench_explain")

    def broken_explain(model, images, method):
        raise RuntimeError(f"{method} is broken\nsecond line")

    monkeypatch.setattr(script, "explain", broken_explain)
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--models", "resnet20:abn", "--methods", "gradcam", "--gradcam-models", "resnet20:abn",
                     "--check-gradcam-speedup", "--warmup", "1", "--repeats", "1", "--batch-size", "2",
                     "--device", "cpu"])  # the error comes in the warm-up call
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    rows = table_rows(out)[2:]
    assert [row[2] for row in rows] == ["forward", "forward+backward", "gradcam"]
    assert rows[2][3] == "failed: RuntimeError: gradcam is broken" and len(rows[2]) == 7
    assert float(rows[0][3].replace(",", "")) > 0  # the references were timed regardless
    assert "not measured (RuntimeError: gradcam is broken)" in out


@pytest.mark.parametrize("spec, message", [
    ("resnet20", "names no head: write arch:head"),
    ("resnet20:fancy", "unknown head 'fancy'"),
    ("resnet9000:abn", "unknown arch 'resnet9000'"),
    ("torchvision:nonet", "torchvision has no classification model 'nonet'"),
])
def test_a_bad_model_is_refused_with_the_fix(spec, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(capsys, "--models", spec, *TINY)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_busy_machine_is_pointed_out(monkeypatch):
    script = load_script("bench_explain")
    monkeypatch.setattr(script.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(script.os, "getloadavg", lambda: (3.5, 3.0, 2.0))
    assert script.busy_cpu_note().startswith("warning: load average 3.5 on 2 CPUs before the start")
    monkeypatch.setattr(script.os, "getloadavg", lambda: (1.4, 0.3, 0.4))  # e.g. a run that just ended
    assert script.busy_cpu_note() is None
