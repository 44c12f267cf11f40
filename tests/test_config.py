"""The Hydra configs are found from a checkout, an editable install and a regular `pip install .` alike."""

from __future__ import annotations

import importlib.metadata
import json
import site
from pathlib import Path

from abn.config import config_dir

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
