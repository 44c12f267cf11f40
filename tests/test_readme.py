"""Every ``abn-train`` / ``abn-explain`` command shown in the README, the pages of docs/ and the configs' comments
runs, and every relative link of those pages leads to a file (and heading) that exists.

Each command is run as written, through the same entry point as the console script (Hydra parses the command
line, composes, makes the run folder, ...), in this process to keep the suite fast. Only overrides that make it
small are appended at the end: tiny data in each data set's real format (``paths.data_dir``, ``data.root``), two
batches of one epoch, CPU instead of GPU, one seed of a seed sweep, and a lighter network of the same input size in
place of the ones above 25 M parameters (their own networks run in tests/test_experiments.py). Placeholders are filled with a real run:
``<date>`` and ``<run>`` with the quick start's run, ``...`` with its checkpoint. ImageNet weights cannot be
downloaded here: ``model.pretrained=true`` gets torchvision's randomly initialised weights instead.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import pytest
import torchvision
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import abn.explain.run as explain_cli
import abn.train as train_cli
from abn.config import config_dir
from abn.data.standins import write_standin_celeba, write_standin_cifar, write_standin_compcars, write_standin_svhn

from .conftest import make_fashion_mnist, run_cli
from .data.test_imagenet import WNIDS, write_image_folders

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:^|&&\s*|#\s+)((?:\.venv/bin/)?abn-(?:train|explain)(?: [^#`]*)?)")

# one epoch of two batches of four images, no loader workers, two rows in the attention grid
SMALL_RUN = ["data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
             "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1", "callbacks.attention_images.num_images=2"]
SMALL_DATA = {
    "shapes": ["data.train_size=32", "data.val_size=16", "data.test_size=16"],
    "fashion_mnist": ["data.val_size=20"],
    "cluttered_fashion_mnist": ["data.val_size=20", "data.train_size=40", "data.test_size=16"],
    "multishapes": ["data.train_size=16", "data.val_size=8", "data.test_size=8"],
    "imagenet": ["data.num_classes=null", "data.image_size=32", "data.resize_size=36"],
    "folder": ["data.image_size=32", "data.resize_size=36"],
    "compcars": ["data.image_size=[32,48]"],
    "celeba": ["data.image_size=32"],
}
# the folder of data_dir that data.root names, for the data sets whose commands show a data.root
ROOT_FOLDERS = {"imagenet": "imagenet", "folder": "images", "compcars": "compcars", "celeba": "."}


# networks above 25 M parameters (ABN head) → one of the same input size: the checkpoints alone would take seconds
LIGHTER = {"wrn28_10": "resnet20", "resnext29_8x64d": "resnet20", "resnext29_16x64d": "resnet20",
           "resnet34": "resnet18", "resnet50": "resnet18", "resnet101": "resnet18", "resnet152": "resnet18",
           "vgg16": "resnet18", "vgg16_bn": "resnet18", "vgg19": "resnet18", "vgg19_bn": "resnet18"}


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) of every command line in the code blocks of the README and docs/*.md, and in comments of
    conf/**/*.yaml."""
    found = []
    for page in PAGES:
        in_code = False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.startswith("```"):
                in_code = not in_code
            elif in_code:
                where = f"{page.relative_to(ROOT).as_posix()}:{number}"
                found += [(where, match) for match in COMMAND.findall(line.split("  #")[0])]
    for path in sorted(config_dir().rglob("*.yaml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("#"):
                found += [(f"conf/{path.relative_to(config_dir())}:{number}", match) for match in COMMAND.findall(line)]
    return [(where, " ".join(command.split("  #")[0].split())) for where, command in found]


COMMANDS = documented_commands()


def test_the_readme_and_the_configs_show_commands():
    assert len(COMMANDS) > 40
    assert ("README.md:17", ".venv/bin/abn-train") in COMMANDS
    assert any(command.startswith("abn-train -m ") for _, command in COMMANDS)
    assert any(command.startswith(".venv/bin/abn-explain ") for _, command in COMMANDS)
    # the pages of docs/ are read too: the paper settings and abn-explain's options are documented there
    assert any(where.startswith("docs/") and command.startswith("abn-explain ") for where, command in COMMANDS)
    assert any(where.startswith("docs/") and "experiment=" in command for where, command in COMMANDS)


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of a page: lower case, punctuation dropped, spaces → hyphens, a
    repeated heading numbered -1, -2, ..."""
    seen: Counter[str] = Counter()
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", without_code_blocks(page.read_text()), flags=re.M):
        anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(f"{anchor}-{seen[anchor]}" if seen[anchor] else anchor)
        seen[anchor] += 1
    return anchors


def test_heading_anchors_are_githubs(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Speed: ABN, light ABN\n\n## `abn-explain`\n\n```bash\n# not a heading\n```\n\n"
                    "## Speed: ABN, light ABN\n")
    assert heading_anchors(page) == {"speed-abn-light-abn", "abn-explain", "speed-abn-light-abn-1"}


@pytest.mark.parametrize("page", PAGES, ids=[page.relative_to(ROOT).as_posix() for page in PAGES])
def test_relative_links_lead_to_files_and_headings(page):
    """Links (and pictures) of the README and docs/*.md that point inside the repository: the file exists and, for a
    link to a heading, the heading does."""
    broken = []
    prose = re.sub(r"`[^`\n]*`", "", without_code_blocks(page.read_text()))  # brackets in code are no links
    for target in LINK.findall(prose):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Tiny copies, in their real formats, of every data set the commands use."""
    root = tmp_path_factory.mktemp("data")
    make_fashion_mnist(root / "FashionMNIST" / "raw", compress=False)
    write_standin_cifar(root, hundred=False, train_per_file=6, test=5)
    write_standin_cifar(root, hundred=True, train_per_file=6, test=5)
    write_standin_svhn(root, {"train": 8, "test": 4})
    # six classes: the ImageNet experiments log top-5 accuracy
    write_image_folders(root / "imagenet", [*WNIDS, "n01491361", "n01494475", "n01496331"], per_class=1)
    write_image_folders(root / "images", ["cat", "dog"], per_class=3)
    write_standin_compcars(root / "compcars")
    write_standin_celeba(root, num_images=12, image_size=(40, 48))
    return root


def data_set_of(arguments: list[str]) -> str:
    for argument in reversed(arguments):
        if argument.startswith("data="):
            return argument.split("=", 1)[1]
        if argument.startswith("experiment="):
            name = argument.split("=", 1)[1]
            return "fashion_mnist" if name == "fashion_mnist" else name.split("_")[0]
    return "shapes"


def arch_of(arguments: list[str]) -> Optional[str]:
    for argument in reversed(arguments):
        if argument.startswith("model.arch="):
            return argument.split("=", 1)[1]
        if argument.startswith("experiment="):
            experiment = OmegaConf.load(config_dir() / "experiment" / f"{argument.split('=', 1)[1]}.yaml")
            return OmegaConf.select(experiment, "model.arch")
    return None


def small_overrides(arguments: list[str], data_dir: Path) -> list[str]:
    """What makes a training command small; nothing for a resume (its run's settings are its own)."""
    if any(argument.startswith("ckpt_path=") for argument in arguments):
        return []
    data = data_set_of(arguments)
    extra = [*SMALL_RUN, f"paths.data_dir={data_dir}", *SMALL_DATA.get(data, [])]
    if data in ROOT_FOLDERS:
        extra.append(f"data.root={data_dir / ROOT_FOLDERS[data]}")
    if any(argument.startswith("trainer=") and argument != "trainer=cpu" for argument in arguments):
        extra += ["trainer.accelerator=cpu", "trainer.devices=1"]
        if "trainer=ddp" in arguments:
            extra.append("trainer.sync_batchnorm=false")  # SyncBatchNorm exists for GPUs only
    arch = arch_of(arguments)
    if arch in LIGHTER:
        extra.append(f"model.arch={LIGHTER[arch]}")
    if any(argument.startswith("hparams_search=") for argument in arguments):
        extra.append("hydra.sweeper.n_trials=2")  # an Optuna search: two trials of its ten
    seeds = [argument for argument in arguments if argument.startswith("seed=") and "," in argument]
    if seeds:
        extra.append("seed=" + seeds[-1].split("=", 1)[1].split(",")[0])
    return extra


@pytest.fixture(autouse=True)
def no_weight_downloads(monkeypatch):
    """torchvision's random initialisation in place of its ImageNet weights (no network here)."""
    build = torchvision.models.get_model
    monkeypatch.setattr(torchvision.models, "get_model", lambda name, weights=None, **kwargs: build(name, **kwargs))


@pytest.fixture(scope="module")
def quick_start_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkout")


def quick_start_run(folder: Path) -> Optional[Path]:
    runs = sorted((folder / "logs" / "train" / "runs").glob("*/checkpoints/last.ckpt"))
    return runs[0].parents[1] if runs else None


def prepare(command: str, data_dir: Path, quick_start_dir: Path, tmp_path: Path) -> tuple[str, list[str], Path]:
    """(entry name, arguments, folder to run in) for a documented command."""
    program, *arguments = command.split()
    name = program.rsplit("/", 1)[-1]
    cwd = tmp_path
    if any(mark in command for mark in ("<date>", "<run>", "...")):
        run = quick_start_run(quick_start_dir)
        assert run is not None, "the quick start's run is missing: run the tests of this file in order"
        cwd = quick_start_dir
        checkpoint = run / "checkpoints" / "last.ckpt"
        if "data=cluttered_fashion_mnist" in command:  # explains a model trained on that data
            checkpoint = train_on_cluttered(data_dir, tmp_path)
        if "attributes=" in command:  # explains a multi-label model
            checkpoint = train_on_multishapes(tmp_path)
        arguments = [a.replace("<date>", run.name).replace("<run>", str(run)).replace("...", str(checkpoint))
                     for a in arguments]
    if name == "abn-explain":
        arguments += ["batch_size=4", "num_batches=1", "metrics.deletion_steps=2", "grid_batches=1"]
        if "data=cluttered_fashion_mnist" in command:
            arguments += [f"paths.data_dir={data_dir}", *SMALL_DATA["cluttered_fashion_mnist"], "data.num_workers=0"]
    else:
        arguments += small_overrides(arguments, data_dir)
    return name, arguments, cwd


def train_on_cluttered(data_dir: Path, folder: Path) -> Path:
    from abn.train import train

    from .conftest import compose_train_config

    overrides = ["data=cluttered_fashion_mnist", "logger=none", *SMALL_RUN, f"paths.data_dir={data_dir}",
                 *SMALL_DATA["cluttered_fashion_mnist"]]
    cfg = compose_train_config(folder / "cluttered", overrides)
    train(cfg)
    GlobalHydra.instance().clear()
    return folder / "cluttered" / "checkpoints" / "last.ckpt"


def train_on_multishapes(folder: Path) -> Path:
    """A multi-task ABN run folder as abn-train leaves it (.hydra/config.yaml beside the checkpoints)."""
    from omegaconf import OmegaConf

    from abn.train import train

    from .conftest import compose_train_config

    run = folder / "multishapes"
    overrides = ["data=multishapes", "model.head=multitask", "logger=none", *SMALL_RUN, *SMALL_DATA["multishapes"]]
    cfg = compose_train_config(run, overrides)
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    train(cfg)
    GlobalHydra.instance().clear()
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("where, command", COMMANDS, ids=[f"{where} {command}" for where, command in COMMANDS])
def test_documented_command_runs(where, command, data_dir, quick_start_dir, tmp_path, monkeypatch, capsys):
    if "data.mask_dir=" in command:
        pytest.skip("a fine-tune on exported maps: tests/scripts/test_export_maps.py runs the page's commands in order")
    if "hydra/launcher=slurm" in command:
        pytest.skip("submits to SLURM: tests/test_slurm.py runs these commands on a real one-node cluster")
    if where != "README.md:17" and quick_start_run(quick_start_dir) is None:  # the quick start first, whatever is selected
        name, arguments, _ = prepare(".venv/bin/abn-train", data_dir, quick_start_dir, tmp_path)
        run_cli(train_cli.main, arguments, quick_start_dir, monkeypatch, capsys)
    name, arguments, cwd = prepare(command, data_dir, quick_start_dir, tmp_path)
    if where == "README.md:17":
        cwd = quick_start_dir
    entry = train_cli.main if name == "abn-train" else explain_cli.main
    _, printed, _ = run_cli(entry, arguments, cwd, monkeypatch, capsys)
    if name == "abn-train":
        assert "Training finished." in printed
        folder = "multiruns" if "-m" in arguments else "runs"
        assert list((cwd / "logs").glob(f"*/{folder}/*")), f"no run folder under {cwd / 'logs'}"
    else:
        assert "Explained" in printed
