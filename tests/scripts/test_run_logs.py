"""scripts/run_logs.py: what the comparison scripts share (their end-to-end tests train real runs through it)."""

from __future__ import annotations

from tests.scripts.conftest import load_script


def test_mean_std_over_seeds_scaled_and_rounded():
    mean_std = load_script("run_logs").mean_std
    assert mean_std([0.9, 0.92, 0.94], scale=100, digits=2) == "92.00 ± 2.00"
    assert mean_std([0.5]) == "0.500"  # one seed: no spread to show
    assert mean_std([]) == "–"


def test_an_earlier_run_is_set_aside_under_the_next_free_name_never_overwritten(tmp_path, capsys):
    set_aside = load_script("run_logs").set_aside
    job = tmp_path / "seed0"
    (job / "checkpoints").mkdir(parents=True)
    (job / "checkpoints" / "last.ckpt").write_text("first")
    (tmp_path / "seed0.old1").mkdir()  # set aside by an earlier sweep

    set_aside(job)

    assert not job.exists() and (tmp_path / "seed0.old2" / "checkpoints" / "last.ckpt").read_text() == "first"
    assert (tmp_path / "seed0.old1").is_dir()
    assert f"kept the unfinished run that was in {job} as seed0.old2" in capsys.readouterr().out
