"""scripts/bench_data.py runs end to end and prints its table (figures are printed, never asserted: no timed test)."""

from __future__ import annotations

from ..conftest import make_fashion_mnist
from .conftest import load_script

TINY = ["--batches", "2", "--warmup", "1", "--steps", "1", "--batch-size", "4", "--device", "cpu"]


def table_rows(output: str) -> list[list[str]]:
    lines = [line for line in output.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_shapes_table_has_the_columns_and_a_verdict(capsys):
    load_script("bench_data").main(["--data", "shapes", "--workers", "0", "--on-device", *TINY])
    output = capsys.readouterr().out
    header, rule, *rows = table_rows(output)
    assert header == ["data", "loader", "workers", "pin memory", "batch", "loader img/s", "model img/s",
                      "loader / model", "verdict"]
    assert set(rule) == {"---"} and len(rows) == 1
    data, loader, workers, pin, batch, loader_speed, model_speed, ratio, verdict = rows[0]
    assert (data, loader, workers, pin, batch) == ("shapes", "DataLoader", "0", "False", "4")
    assert float(loader_speed.replace(",", "")) > 0 and float(model_speed.replace(",", "")) > 0
    assert verdict == ("keeps up" if float(ratio) >= 1 else "too slow")
    assert "shapes has no on-device path" in output


def test_fashion_mnist_from_the_root_on_the_device_path(tmp_path, capsys):
    make_fashion_mnist(tmp_path / "FashionMNIST" / "raw", train=5040, test=10, compress=False)  # val_size is 5000
    load_script("bench_data").main(["--data", "fashion_mnist", "--root", str(tmp_path), "--workers", "0",
                                    "--on-device", *TINY])
    output = capsys.readouterr().out
    rows = table_rows(output)[2:]
    assert [row[:4] for row in rows] == [["fashion_mnist", "DataLoader", "0", "False"],
                                         ["fashion_mnist", "on device", "–", "–"]]
    assert "stand-in" not in output
