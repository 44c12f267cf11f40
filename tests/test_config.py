"""The Hydra configs are found from a checkout, an editable install and a regular `pip install .` alike."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import site
import threading
from pathlib import Path

from abn.config import claim_new_folder, config_dir

from .conftest import compose_train_config

REPO_CONF = Path(__file__).resolve().parents[1] / "conf"


def test_config_dir_holds_every_group():
    root = config_dir()
    for group in ("data", "model", "trainer", "callbacks", "logger", "paths", "experiment", "hydra"):
        assert (root / group).is_dir(), f"config group {group} missing in {root}"


def test_every_config_file_ships_in_the_installed_package():
    # look in site-packages only: a build leaves abn.egg-info in the checkout, which is on sys.path here
    site_dirs = [*site.getsitepackages(), site.getusersitepackages()]
    dist = next(iter(importlib.metadata.distributions(name="abn", path=site_dirs)))
    direct_url = dist.read_text("direct_url.json")
    if direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"):
        return  # an editable install reads conf/ from the checkout itself
    shipped = {str(path) for path in dist.files or []}
    expected = {f"abn/conf/{p.relative_to(REPO_CONF).as_posix()}" for p in REPO_CONF.rglob("*.yaml")}
    assert expected and expected <= shipped, f"not packaged: {sorted(expected - shipped)}"


def test_job_folder_names_are_unquoted_paths_hydra_takes_and_short():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from abn.config import MAX_JOB_FOLDER, job_folder_name

    assert job_folder_name(0, "model.head=baseline,trainer.max_epochs=1") == "0_model.head-baseline_trainer.max_epochs-1"
    assert job_folder_name(3, "") == "3"
    assert job_folder_name(1, "model/scheduler=cosine,methods=[abn,cam]") == "1_model.scheduler-cosine_methods-abn_cam"
    many = ",".join(f"model.option_{i}=value_{i}" for i in range(40))
    long_one, other = job_folder_name(7, many), job_folder_name(7, many + "x")
    assert len(long_one) <= len("7_") + MAX_JOB_FOLDER and long_one != other
    parser = OverridesParser.create()
    for name in (long_one, job_folder_name(0, "model.head=baseline,data.root=/a b,seed=1")):
        path = f"/logs/train/multiruns/2026-12-01_10-00-00/{name}/checkpoints/last.ckpt"
        assert parser.parse_override(f"ckpt_path={path}").value() == path


def test_workers_are_at_most_the_available_cores(monkeypatch):
    import abn.config

    monkeypatch.setattr(abn.config, "available_cores", lambda: 2)
    assert abn.config.at_most_cores(8) == 2 and abn.config.at_most_cores(1) == 1


class FrozenClock(datetime.datetime):
    """Every run starts at the same second."""

    @classmethod
    def now(cls, tz=None):
        return cls(2026, 1, 1, 12, 0, 0)


def test_runs_and_sweeps_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch, clear_hydra):
    import hydra.core.utils

    monkeypatch.setattr(hydra.core.utils, "datetime", FrozenClock)  # Hydra's ${now:} reads the time from there
    for kind, parent in (("run", "runs"), ("sweep", "multiruns")):
        folders = []
        for head in ("baseline", "abn"):
            cfg = compose_train_config(tmp_path, [f"model.head={head}"])
            folders.append(Path(cfg.hydra[kind].dir))
            assert Path(cfg.hydra[kind].dir) == folders[-1]  # read again: the same folder, no new one
        base = tmp_path / "logs" / "train" / parent / "2026-01-01_12-00-00"
        assert folders == [base, base.with_name(base.name + "_2")]
        assert sorted(base.parent.iterdir()) == folders


def test_a_new_folder_goes_to_one_process_only_and_sorts_in_time_order(tmp_path):
    wanted = tmp_path / "runs" / "2026-01-01_12-00-00"
    start = threading.Barrier(6)
    claimed = []

    def claim():
        start.wait()
        claimed.append(claim_new_folder(str(wanted)))

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == [str(wanted)] + [f"{wanted}_{n}" for n in range(2, 7)]
    later = claim_new_folder(str(wanted.with_name("2026-01-01_12-00-01")))
    assert sorted([*claimed, later], key=lambda p: Path(p).name)[-1] == later
