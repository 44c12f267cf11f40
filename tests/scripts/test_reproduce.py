"""scripts/reproduce.py end to end on a tiny Fashion-MNIST in its real IDX format: one run per (network, head, seed)
with the paper's schedule shape, the mean ± std table with its verdict, the per-seed CSV, --reuse."""

from __future__ import annotations

import csv
import re

import yaml

from tests.conftest import make_fashion_mnist
from tests.scripts.conftest import load_script


def tiny(tmp_path) -> list[str]:
    make_fashion_mnist(tmp_path / "data" / "FashionMNIST" / "raw", train=64, test=20, compress=False)
    return ["--nets", "resnet20", "--heads", "baseline", "abn", "abn_light", "--seeds", "0", "1", "--epochs", "4",
            "--cpu", "--train-override", f"paths.data_dir={tmp_path / 'data'}", "--train-override", "data.val_size=16",
            "--train-override", "data.batch_size=16"]


def test_trains_each_head_per_seed_and_writes_the_table_and_the_csv(tmp_path):
    script = load_script("reproduce")
    assert script.PAGE.name == "results.md" and "<!-- reproduce-table:start -->" in script.PAGE.read_text()
    page = tmp_path / "results.md"
    page.write_text("intro\n<!-- reproduce-table:start -->\nold\n<!-- reproduce-table:end -->\nrest\n")
    script.PAGE, script.DOCS_CSV = page, tmp_path / "docs.csv"
    out = tmp_path / "out"
    flags = tiny(tmp_path)
    table = script.main(["--out", str(out), *flags, "--update-docs"])

    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in table.splitlines()
            if line.startswith("| resnet20 |")}
    assert set(rows) == {("resnet20", "baseline"), ("resnet20", "abn"), ("resnet20", "abn_light")}
    assert len(re.findall(r"\d+\.\d\d ± \d+\.\d\d", rows[("resnet20", "abn")])) == 2  # both branches
    assert "| – | 2 |" in rows[("resnet20", "baseline")]  # no attention branch
    assert re.search(r"resnet20: ABN − baseline = [+-]\d+\.\d\d points \(spread \d+\.\d\d\), (within|outside)", table)
    assert "×0.1 at epochs 2 and 3" in table

    light = yaml.safe_load((out / "resnet20" / "4ep" / "abn_light" / "seed1" / ".hydra" / "config.yaml").read_text())
    assert light["model"]["branch_depth"] == "light" and light["seed"] == 1
    assert light["model"]["scheduler"]["milestones"] == [2, 3] and light["trainer"]["max_epochs"] == 4
    assert light["data"]["_target_"] == "abn.data.FashionMNISTDataModule"

    with (tmp_path / "docs.csv").open() as file:
        per_seed = list(csv.DictReader(file))
    assert [(row["head"], row["seed"]) for row in per_seed] == [
        ("baseline", "0"), ("baseline", "1"), ("abn", "0"), ("abn", "1"), ("abn_light", "0"), ("abn_light", "1")]
    assert per_seed[0]["test_acc_att"] == "" and 0 <= float(per_seed[2]["test_acc_att"]) <= 1
    assert (out / "reproduce_4ep.csv").read_text() == (tmp_path / "docs.csv").read_text()
    text = page.read_text()
    assert "old" not in text and table in text and text.endswith("rest\n")

    checkpoint = out / "resnet20" / "4ep" / "abn" / "seed0" / "checkpoints" / "last.ckpt"
    written = checkpoint.stat().st_mtime_ns
    assert script.main(["--out", str(out), *flags, "--reuse"]) == table  # nothing retrained, the same table
    assert checkpoint.stat().st_mtime_ns == written


def test_the_verdict_compares_the_difference_with_the_seed_spread():
    script = load_script("reproduce")
    rows = [{"net": "n", "head": head, "test_acc": value}
            for head, values in (("baseline", (0.90, 0.91, 0.92)), ("abn", (0.95, 0.96, 0.97))) for value in values]
    assert script.verdict(rows, "n") == ("n: ABN − baseline = +5.00 points (spread 1.41), outside the seed spread: "
                                         "ABN is better.")
    rows[3:] = [{"net": "n", "head": "abn", "test_acc": value} for value in (0.905, 0.915, 0.925)]
    assert "within the seed spread" in script.verdict(rows, "n")
    assert script.verdict(rows[:4], "n") == "n: fewer than two seeds of `abn` or `baseline`, no verdict."
