"""scripts/reproduce.py end to end on a tiny Fashion-MNIST in its real IDX format: one run per (network, head, seed)
with the paper's schedule shape, the mean ± std table with its verdict, the per-seed CSV, --reuse; rows recorded
earlier (--recorded) and a sweep not yet finished (--only-finished)."""

from __future__ import annotations

import csv
import re

import pytest
import torch
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
    train_log = (out / "resnet20" / "4ep" / "baseline" / "seed0" / "train.log").read_text()
    assert f"Precision {per_seed[0]['precision']}:" in train_log
    instructions = per_seed[0]["device"].rsplit(", ", 1)[1].rstrip(")")  # e.g. "AMD EPYC (2 cores, AVX2)"
    assert instructions in train_log  # the set the precision was chosen from
    assert (out / "reproduce_4ep.csv").read_text() == (tmp_path / "docs.csv").read_text()
    text = page.read_text()
    assert "old" not in text and table in text and text.endswith("rest\n")

    checkpoint = out / "resnet20" / "4ep" / "abn" / "seed0" / "checkpoints" / "last.ckpt"
    written = checkpoint.stat().st_mtime_ns
    assert script.main(["--out", str(out), *flags, "--reuse"]) == table  # nothing retrained, the same table
    assert checkpoint.stat().st_mtime_ns == written


@pytest.mark.parametrize("amx, avx512_bf16, named", [(False, False, None), (False, True, "AVX-512 BF16"),
                                                    (True, True, "AMX and AVX-512 BF16")])
def test_the_machine_names_the_cpu_instructions_runs_of_one_model_name_differ_by(monkeypatch, amx, avx512_bf16,
                                                                                named):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    machine = load_script("reproduce").this_machine(cpu=True)
    assert re.fullmatch(r".+ \(\d+ cores, .+\)", machine)
    assert machine.endswith(f", {named or torch.backends.cpu.get_cpu_capability()})")


def test_the_verdict_compares_the_difference_with_the_seed_spread():
    script = load_script("reproduce")
    rows = [{"net": "n", "head": head, "test_acc": value}
            for head, values in (("baseline", (0.90, 0.91, 0.92)), ("abn", (0.95, 0.96, 0.97))) for value in values]
    assert script.verdict(rows, "n") == ("n: ABN − baseline = +5.00 points (spread 1.41), outside the seed spread: "
                                         "ABN is better.")
    rows[3:] = [{"net": "n", "head": "abn", "test_acc": value} for value in (0.905, 0.915, 0.925)]
    assert "within the seed spread" in script.verdict(rows, "n")
    assert script.verdict(rows[:4], "n") == "n: fewer than two seeds of `abn` or `baseline`, no verdict."


RECORDED = """net,head,seed,epochs,test_acc,test_acc_att,precision,device
resnet20,baseline,0,30,0.930,,bf16-mixed,Some CPU (2 cores)
resnet20,baseline,1,30,0.932,,bf16-mixed,Some CPU (2 cores)
resnet20,abn,0,30,0.940,0.938,bf16-mixed,Some CPU (2 cores)
resnet20,abn,1,30,0.942,0.941,32-true,"Other CPU (2 cores, AVX2)"
resnet56,abn,0,30,0.950,0.949,bf16-mixed,Some GPU
"""


def test_recorded_rows_are_taken_as_measured_and_only_finished_names_the_missing_runs(tmp_path):
    """After a fresh checkout the run folders are gone but docs/reproduce_fashion_mnist.csv is not: its rows count,
    nothing is trained, the missing runs are named, and rewriting the CSV keeps the rows outside the selection."""
    script = load_script("reproduce")
    page = tmp_path / "results.md"
    page.write_text("<!-- reproduce-table:start -->\n<!-- reproduce-table:end -->\n")
    script.PAGE, script.DOCS_CSV = page, tmp_path / "reproduce_fashion_mnist.csv"
    script.DOCS_CSV.write_text(RECORDED)
    out = tmp_path / "out"
    table = script.main(["--out", str(out), "--nets", "resnet20", "--heads", "baseline", "cam", "abn",
                         "--seeds", "0", "1", "--recorded", str(script.DOCS_CSV), "--only-finished", "--update-docs"])

    assert not (out / "resnet20").exists()  # nothing trained
    assert "| resnet20 | baseline | 93.10 ± 0.14 | – | 2 |" in table
    assert "| resnet20 | cam | – | – | 0 |" in table
    assert "| resnet20 | abn | 94.10 ± 0.14 | 93.95 ± 0.21 | 2 |" in table
    assert "resnet20: ABN − baseline = +1.00 points (spread 0.20), outside the seed spread: ABN is better." in table
    assert "Not measured yet (2 runs): resnet20 cam (seeds 0, 1)." in table
    assert "Trained on Other CPU (2 cores, AVX2), 32-true (1 run); Some CPU (2 cores), bf16-mixed (3 runs)." in table
    assert "--recorded" not in table and "--only-finished" not in table  # where figures come from, not what they are

    with script.DOCS_CSV.open() as file:
        kept = [(row["net"], row["head"], row["seed"], row["device"]) for row in csv.DictReader(file)]
    assert ("resnet56", "abn", "0", "Some GPU") in kept and len(kept) == 5  # the row outside the selection stays


def test_a_recorded_file_that_is_missing_or_not_ours_is_named(tmp_path):
    script = load_script("reproduce")
    flags = ["--out", str(tmp_path / "out"), "--only-finished", "--recorded"]
    with pytest.raises(SystemExit, match="no such file"):
        script.main([*flags, str(tmp_path / "absent.csv")])
    other = tmp_path / "other.csv"
    other.write_text("name,accuracy\nx,0.9\n")
    with pytest.raises(SystemExit, match=r"not a per-seed CSV of scripts/reproduce.py \(no column epochs, head, net"):
        script.main([*flags, str(other)])
    other.write_text("net,head,seed,epochs,test_acc\nresnet20,abn,zero,30,0.9\n")
    with pytest.raises(SystemExit, match="line 2: .*zero.*mend or delete that row"):
        script.main([*flags, str(other)])
