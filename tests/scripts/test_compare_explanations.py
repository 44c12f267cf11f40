"""scripts/compare_explanations.py end to end on a tiny setting: one multirun, explanations, the two tables."""

from __future__ import annotations

from tests.scripts.conftest import load_script


def test_trains_three_heads_explains_each_and_writes_both_tables(tmp_path):
    script = load_script("compare_explanations")
    assert script.PAGE == script.ROOT / "docs" / "results.md" and script.TABLE_START in script.PAGE.read_text()
    page = tmp_path / "results.md"
    page.write_text(f"intro\n{script.TABLE_START}\nold table\n{script.TABLE_END}\nrest\n")
    script.PAGE, script.ROOT_DOCS = page, tmp_path / "docs"
    args = ["--out", str(tmp_path / "out"), "--data", "shapes", "--epochs", "1", "--images", "8", "--batch-size", "8",
            "--steps", "2", "--cpu", "--train-override", "data.train_size=32", "--train-override", "data.val_size=16",
            "--train-override", "data.test_size=8", "--train-override", "logger=none", "--update-docs"]
    table = script.main(args)

    rows = [line for line in table.splitlines() if line.startswith("| shapes |")]
    main_rows = [row for row in rows if row.count("|") == 12]
    methods = {head: [row.split("|")[4].strip() for row in main_rows if row.split("|")[2].strip() == head]
               for head in ("baseline", "cam", "abn")}
    assert methods["abn"][0] == "abn" and "relevance_cam" in methods["abn"] and "random" in methods["abn"]
    assert "abn" not in methods["cam"] and "cam" in methods["cam"] and "cam" in methods["baseline"]
    assert all("%" in row.split("|")[3] for row in main_rows)  # accuracy per head
    depth_rows = [row for row in rows if row.count("|") == 9]
    assert len(depth_rows) == 3  # Grad-CAM vs Relevance-CAM at three depths, per head
    text = page.read_text()
    assert "old table" not in text and table in text and text.endswith("rest\n")
    assert (tmp_path / "docs" / "explanations_shapes.png").is_file()
    assert (tmp_path / "out" / "comparison.md").read_text().strip() == table.strip()
