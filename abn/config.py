"""Where the Hydra configs are: packaged as ``abn/conf`` in a wheel, ``conf/`` beside ``abn/`` in a checkout."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> Path:
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"the Hydra configs (train.yaml) are neither in {package / 'conf'} nor in {package.parent / 'conf'}; "
        "reinstall the package (pip install .) or run from a checkout of the repository"
    )
