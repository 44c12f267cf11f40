"""scripts/compare_precision.py end to end on a tiny quick start: one multirun over precision × seed, the table of
mean ± std per precision with what auto chose, --reuse."""

from __future__ import annotations

import re

from tests.scripts.conftest import load_script

TINY = ["data.train_size=32", "data.val_size=16", "data.test_size=16", "data.batch_size=16", "trainer.max_epochs=1",
        "--seeds", "0", "1"]


def test_fp32_against_auto_over_seeds(tmp_path):
    script = load_script("compare_precision")
    out = tmp_path / "out"
    table = script.main([*TINY, "--out", str(out)])
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| 32-true") or line.startswith("| auto")]
    assert [row[0] for row in rows] == ["| 32-true", "| auto"]
    assert rows[0][1] == "32-true: set in the config"
    assert rows[1][1].startswith(("bf16-mixed: ", "32-true: ", "16-mixed: "))  # the device's choice, with its reason
    for row in rows:  # both branches' test accuracy over the two seeds
        assert all(re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", cell.strip(" |")) for cell in row[2:4]), row
    assert (out / "quickstart" / "3" / ".hydra" / "overrides.yaml").read_text().count("seed=1") == 1
    assert "trainer.precision=auto" in (out / "quickstart" / "3" / ".hydra" / "overrides.yaml").read_text()

    checkpoint = out / "quickstart" / "0" / "checkpoints" / "last.ckpt"
    written = checkpoint.stat().st_mtime_ns
    assert script.main([*TINY, "--out", str(out), "--reuse"]) == table
    assert checkpoint.stat().st_mtime_ns == written
