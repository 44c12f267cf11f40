"""The human-in-the-loop round trip of docs/human_in_the_loop.md: scripts/export_maps.py writes what data=folder
reads, scripts/edit_maps_example.py edits it, and the page's commands run as written (on tiny data)."""

from __future__ import annotations

import csv
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import abn.explain.run as explain_cli
import abn.train as train_cli
from abn.checkpoints import load_network
from abn.data import FolderDataModule, generate_split
from tests.conftest import run_cli, train_once
from tests.scripts.conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "human_in_the_loop.md"
# what makes the page's commands small: 48 training shapes, one epoch of two steps
TINY_DATA = ["data.train_size=48", "data.val_size=16", "data.test_size=16"]
SHORT_RUN = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
             "+trainer.limit_test_batches=1", "logger=none", "data.num_workers=0", "data.batch_size=8"]
SHAPES = ["circle", "square", "triangle", "diamond", "plus", "ring", "cross", "frame"]
MEAN, STD = 0.5, 0.25


def worked_example() -> list[list[str]]:
    """The commands of the page's worked example, in order, split as a shell would."""
    block = re.search(r"## Worked example.*?```bash\n(.*?)```", PAGE.read_text(), re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def fill(command: list[str], run: Path) -> list[str]:
    """The command with ``<date>`` replaced by the run folder's name."""
    return [part.replace("<date>", run.name) for part in command]


def run_main(main, argv: list[str], cwd: Path, monkeypatch) -> object:
    monkeypatch.chdir(cwd)
    return main(argv)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """The page's first command (an ABN on the shapes), tiny: the run folder, in a folder of its own."""
    folder = tmp_path_factory.mktemp("checkout")
    train_command = worked_example()[0]
    assert train_command[0] == "abn-train"
    return train_once(folder, [*train_command[1:], *TINY_DATA, *SHORT_RUN])


def export(base_run: Path, out: Path, *extra: str) -> dict:
    script = load_script("export_maps")
    return script.main([str(base_run / "checkpoints" / "last.ckpt"), "--out", str(out), "--device", "cpu", *extra])


def read_png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def test_export_writes_the_images_as_seen_their_maps_and_boxes_as_data_folder_reads_them(base_run, tmp_path):
    out = tmp_path / "export"
    result = export(base_run, out, "--num-images", "32")
    names = sorted(path.relative_to(out / "images").as_posix() for path in (out / "images").rglob("*.png"))
    assert len(names) == 32 == result["images"]
    # class folders in the model's order once sorted, as data=folder numbers them
    folders = [f"{i}_{name}" for i, name in enumerate(SHAPES)]
    assert sorted({Path(name).parts[1] for name in names}) == folders
    assert sorted(path.relative_to(out / "maps").as_posix() for path in (out / "maps").rglob("*.png")) == names

    images, labels, boxes = generate_split(48, 8, "train", seed=0, image_size=32)
    net = load_network(str(base_run / "checkpoints" / "last.ckpt"), torch.device("cpu"))
    rows = {row["name"]: row for row in csv.DictReader(open(out / "boxes.csv"))}
    assert sorted(rows) == names
    for name in names:
        index = int(Path(name).stem.split("_")[1])
        assert Path(name).parts[1] == folders[int(labels[index])]
        # the training image unflipped (the evaluation transform), at its input size, as the PNG holds it
        assert np.array_equal(read_png(out / "images" / name), images[index].permute(1, 2, 0).numpy())
        with torch.no_grad():
            attention = net(((images[index : index + 1].float() / 255) - MEAN) / STD).attention
        expected = F.interpolate(attention, size=(32, 32), mode="bilinear", align_corners=False)[0, 0] * 255
        assert np.abs(read_png(out / "maps" / name).astype(float) - expected.numpy()).max() <= 0.51
        assert [float(rows[name][key]) for key in ("x0", "y0", "x1", "y1")] == boxes[index].tolist()
        view = Image.open(out / "side_by_side" / Path(name).relative_to("train"))
        assert view.size == (2 * 128, 128)  # image | map, enlarged 4× from 32 px

    folder = FolderDataModule(root=str(out / "images"), mask_dir=str(out / "maps"), image_size=32, resize_only=True,
                              hflip=False, mean=[MEAN] * 3, std=[STD] * 3, num_workers=0)
    assert folder.discover_classes() == folders
    command = result["command"]
    assert command.startswith(f"abn-train data=folder data.root={out / 'images'} data.mask_dir={out / 'maps'} ")
    assert f"init_from={base_run / 'checkpoints' / 'last.ckpt'}" in command and "model.arch=resnet20" in command
    assert "data.image_size=32 data.resize_only=true" in command and "data.mean=[0.5,0.5,0.5]" in command


def test_data_settings_can_be_changed_as_with_abn_explain(base_run, tmp_path):
    export(base_run, tmp_path / "seed1", "data.seed=1", "--indices", *map(str, range(8)))
    images, _, _ = generate_split(48, 8, "train", seed=1, image_size=32)
    assert np.array_equal(read_png(tmp_path / "seed1" / "images" / "train" / "0_circle" / "train_00000.png"),
                          images[0].permute(1, 2, 0).numpy())
    with pytest.raises(SystemExit, match="8 classes .* the data 5"):
        export(base_run, tmp_path / "five", "data=shapes", "data.num_classes=5")
    with pytest.raises(SystemExit, match="only data overrides .* not model.arch=resnet32"):
        export(base_run, tmp_path / "model", "model.arch=resnet32")


def test_bad_requests_are_refused_and_an_earlier_export_is_kept(base_run, tmp_path):
    out = tmp_path / "export"
    export(base_run, out, "--indices", *map(str, range(8)))
    edited = out / "maps" / "train" / "0_circle" / "train_00000.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(edited)  # a person's edit
    with pytest.raises(SystemExit, match="already holds an export .* add --overwrite"):
        export(base_run, out, "--indices", *map(str, range(8)))
    with pytest.raises(SystemExit, match="miss the class\\(es\\) 3_diamond, 4_plus"):
        export(base_run, out, "--indices", "0", "1", "2", "--overwrite")
    with pytest.raises(SystemExit, match="--indices 48 are outside the split \\(0 to 47\\)"):
        export(base_run, out, "--indices", "48", "--overwrite")
    assert read_png(edited).min() == 255  # none of the refusals touched the export
    export(base_run, out, "--indices", *map(str, range(8, 16)), "--overwrite")
    assert not edited.exists() and len(list((out / "maps").rglob("*.png"))) == 8  # replaced, nothing stale left

    checkpoint = torch.load(base_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["head"] = "cam"
    cam = tmp_path / "cam.ckpt"
    torch.save(checkpoint, cam)
    with pytest.raises(SystemExit, match="head='cam': only head=abn has the attention map"):
        load_script("export_maps").main([str(cam), "--out", str(tmp_path / "cam")])


def test_the_scripted_person_erases_outside_the_box_and_never_overwrites_unasked(tmp_path):
    export_dir = tmp_path / "export"
    maps = export_dir / "maps" / "train" / "0_a"
    maps.mkdir(parents=True)
    Image.fromarray(np.full((8, 10), 100, np.uint8)).save(maps / "boxed.png")
    Image.fromarray(np.full((8, 10), 60, np.uint8)).save(maps / "free.png")
    (export_dir / "boxes.csv").write_text("name,x0,y0,x1,y1\ntrain/0_a/boxed.png,2,1,5.5,4\n")
    script = load_script("edit_maps_example")

    counts = script.main([str(export_dir)])
    assert counts == {"edited": 1, "unchanged": 1}
    edited = read_png(export_dir / "edited_maps" / "train" / "0_a" / "boxed.png")
    expected = np.zeros((8, 10), np.uint8)
    expected[1:4, 2:6] = 100  # a box edge inside a pixel keeps that pixel
    assert np.array_equal(edited, expected)
    assert np.array_equal(read_png(export_dir / "edited_maps" / "train" / "0_a" / "free.png"), np.full((8, 10), 60))
    assert read_png(maps / "boxed.png").min() == 100  # the exported maps as they were

    with pytest.raises(SystemExit, match="already holds files .* --overwrite"):
        script.main([str(export_dir)])
    script.main([str(export_dir), "--fill-box", "--overwrite"])
    expected[1:4, 2:6] = 255
    assert np.array_equal(read_png(export_dir / "edited_maps" / "train" / "0_a" / "boxed.png"), expected)
    with pytest.raises(SystemExit, match="is the exported maps folder; add --overwrite"):
        script.main([str(export_dir), "--out", str(export_dir / "maps")])
    (export_dir / "boxes.csv").unlink()
    with pytest.raises(SystemExit, match="boxes.csv does not exist: the exported data had no boxes"):
        script.main([str(export_dir), "--out", str(tmp_path / "other")])


def test_the_pages_round_trip_runs_as_written(base_run, monkeypatch, capsys):
    """Export → edit → fine-tune one short epoch through abn-train's Hydra entry → abn-explain, each command as
    the page shows it (the run folders filled in, small settings appended)."""
    checkout = base_run.parents[3]
    commands = worked_example()
    export_command, edit_command, tune_command, explain_command = commands[1:]
    assert export_command[:2] == ["python", "scripts/export_maps.py"]
    run_main(load_script("export_maps").main, [*fill(export_command, base_run)[2:], "--num-images", "32",
                                               "--device", "cpu"], checkout, monkeypatch)
    assert edit_command[:2] == ["python", "scripts/edit_maps_example.py"]
    run_main(load_script("edit_maps_example").main, edit_command[2:], checkout, monkeypatch)
    assert (checkout / "logs" / "hitl" / "edited_maps").is_dir()

    assert tune_command[0] == "abn-train" and "model.freeze_features=true" in tune_command
    _, printed, _ = run_cli(train_cli.main, [*fill(tune_command, base_run)[1:], *SHORT_RUN], checkout, monkeypatch,
                            capsys)
    started = f"started from the weights of logs/train/runs/{base_run.name}/checkpoints/last.ckpt"
    assert started in printed
    (tuned,) = [run for run in (checkout / "logs" / "train" / "runs").iterdir() if run != base_run]
    base = torch.load(base_run / "checkpoints" / "last.ckpt", weights_only=True)
    after = torch.load(tuned / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["hyper_parameters"]["attention_supervision"]["loss"] == "l1"
    assert after["global_step"] == 2
    # the feature extractor's weights as loaded (model.freeze_features=true), the attention branch's trained
    learnt = ("weight", "bias")
    features = [key for key in base["state_dict"] if key.startswith("net.features.") and key.endswith(learnt)]
    branch = [key for key in base["state_dict"] if key.startswith("net.attention_branch.") and key.endswith(learnt)]
    assert features and branch
    assert all(torch.equal(base["state_dict"][key], after["state_dict"][key]) for key in features)
    assert any(not torch.equal(base["state_dict"][key], after["state_dict"][key]) for key in branch)

    assert explain_command[0] == "abn-explain"
    _, printed, _ = run_cli(explain_cli.main, [*fill(explain_command, tuned)[1:], "batch_size=4", "num_batches=1"],
                            checkout, monkeypatch, capsys)
    assert "Explained 4 test images" in printed
