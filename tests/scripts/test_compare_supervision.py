"""scripts/compare_supervision.py end to end on a tiny setting: runs per seed, explanations, the mean ± std table."""

from __future__ import annotations

import re

from tests.scripts.conftest import load_script

TINY = ["--data", "shapes", "--seeds", "0", "1", "--losses", "l1", "--fractions", "0.5", "--epochs", "1",
        "--images", "8", "--batch-size", "8", "--steps", "2", "--cpu", "--train-override", "data.train_size=32",
        "--train-override", "data.val_size=16", "--train-override", "data.test_size=8"]


def test_trains_each_setting_per_seed_and_tabulates_mean_and_spread(tmp_path):
    script = load_script("compare_supervision")
    assert script.PAGE == script.ROOT / "docs" / "supervision.md" and script.TABLE_START in script.PAGE.read_text()
    page = tmp_path / "supervision.md"
    page.write_text(f"intro\n{script.TABLE_START}\nold table\n{script.TABLE_END}\nrest\n")
    script.PAGE = page
    out = tmp_path / "out"
    table = script.main(["--out", str(out), *TINY, "--update-docs"])

    rows = {tuple(cell.strip() for cell in line.split("|")[2:5]): line for line in table.splitlines()
            if line.startswith("| shapes |")}
    assert set(rows) == {("baseline", "Grad-CAM", "–"), ("ABN", "M", "none"), ("ABN", "class map", "none"),
                         ("ABN, `l1` loss", "M", "50 %")}
    for line in rows.values():  # accuracy and three metrics, each a mean ± std over the two seeds
        assert len(re.findall(r"\d+\.\d+ ± \d+\.\d+", line)) == 4, line
    for setting in ("baseline", "abn", "l1@0.5"):
        for seed in (0, 1):
            assert (out / "shapes" / "1ep" / setting / f"seed{seed}" / "checkpoints" / "last.ckpt").is_file()
    supervised = (out / "shapes" / "1ep" / "l1@0.5" / "seed0" / ".hydra" / "config.yaml").read_text()
    assert "loss: l1" in supervised and "supervised_fraction: 0.5" in supervised
    assert "accelerator: cpu" in supervised  # --cpu
    text = page.read_text()
    assert "old table" not in text and table in text and text.endswith("rest\n")

    checkpoint = out / "shapes" / "1ep" / "abn" / "seed0" / "checkpoints" / "last.ckpt"
    written = checkpoint.stat().st_mtime_ns
    assert script.main(["--out", str(out), *TINY, "--reuse"]) == table  # nothing retrained, same table
    assert checkpoint.stat().st_mtime_ns == written

    # a sweep not yet finished: its finished settings tabulated, the others named, nothing trained
    partial = script.main(["--out", str(out), *TINY, "--fractions", "0.5", "0.25", "--only-finished"])
    assert "--only-finished" not in partial  # the command quoted is the one that trains the whole table
    assert table.split("\n", 2)[2] in partial  # the same rows
    assert partial.endswith("\n\nNot measured yet (not every seed's run finished): shapes l1@0.25.")
    assert not (out / "shapes" / "1ep" / "l1@0.25").exists() and checkpoint.stat().st_mtime_ns == written


def test_an_interrupted_run_is_trained_again_and_kept_aside(tmp_path, capsys):
    """A run killed before its end has checkpoints but no test accuracy: --reuse trains it again instead of
    tabulating it, and keeps the interrupted folder."""
    script = load_script("compare_supervision")
    out = tmp_path / "out"
    one_seed = [*TINY[:4], *TINY[5:], "--losses"]  # seed 0, only the baseline and the unsupervised ABN
    script.main(["--out", str(out), *one_seed])
    job = out / "shapes" / "1ep" / "abn" / "seed0"
    baseline = out / "shapes" / "1ep" / "baseline" / "seed0" / "checkpoints" / "last.ckpt"
    written = baseline.stat().st_mtime_ns
    for events in (job / "tensorboard").rglob("events.out.tfevents.*"):
        events.unlink()  # as if killed after its last checkpoint, before the test
    capsys.readouterr()
    script.main(["--out", str(out), *one_seed, "--reuse"])
    printed = capsys.readouterr().out
    assert f"kept the unfinished run that was in {job} as seed0.old1" in printed
    assert (job.parent / "seed0.old1" / "checkpoints" / "last.ckpt").is_file()
    assert load_script("run_logs").test_accuracy(job) is not None
    assert printed.count("kept the") == 1 and baseline.stat().st_mtime_ns == written  # the finished baseline reused
