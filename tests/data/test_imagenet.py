"""ImageNet: class folders and torchvision's archive layout, on tiny copies; the validation-sorting script."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image
from torchvision.datasets import imagenet as tv_imagenet

from abn.data import ImageNetDataModule
from abn.module import ABNModule
from abn.train import train

from ..conftest import compose_train_config, record_instantiated
from ..scripts.conftest import load_script

WNIDS = ["n01440764", "n01443537", "n01484850"]
NAMES = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark"]


def jpeg_bytes(seed: int, size=(50, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_image_folders(root: Path, classes: list[str], per_class: int) -> None:
    for split in ("train", "val"):
        for k, wnid in enumerate(classes):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{wnid}_{i}.JPEG").write_bytes(jpeg_bytes(k * 10 + i, (40 + i, 50)))


def add_to_tar(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def val_labels(count: int) -> list[int]:
    """The ILSVRC2012_ID (1-based, as in the devkit) of each validation image, in file-name order."""
    return [(i * 2) % len(WNIDS) + 1 for i in range(count)]


def write_devkit(path: Path, val_count: int) -> None:
    """ILSVRC2012_devkit_t12.tar.gz: data/meta.mat (synsets: the leaves plus one inner node) and the val ground truth."""
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    synsets = np.zeros(len(WNIDS) + 1, dtype=[(f, object) for f in fields])
    for i, (wnid, words) in enumerate(zip(WNIDS + ["n00000001"], NAMES + ["fish"])):
        leaf = i < len(WNIDS)
        synsets[i] = (i + 1, wnid, words, "", 0 if leaf else 3, np.array([]), 0, 10)
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    truth = "".join(f"{label}\n" for label in val_labels(val_count)).encode()
    with tarfile.open(path, "w:gz") as archive:
        add_to_tar(archive, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        add_to_tar(archive, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)


def val_name(i: int) -> str:
    return f"ILSVRC2012_val_{i + 1:08d}.JPEG"


def write_val_archive(path: Path, count: int) -> None:
    with tarfile.open(path, "w") as archive:
        for i in reversed(range(count)):  # member order need not be file-name order
            add_to_tar(archive, val_name(i), jpeg_bytes(100 + i))


def write_archives(root: Path, per_class: int = 2, val_count: int = 6) -> None:
    """torchvision's archive layout: the train tar of per-class tars, the flat val tar and the devkit."""
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w") as outer:
        for k, wnid in enumerate(WNIDS):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as class_tar:
                for i in range(per_class):
                    add_to_tar(class_tar, f"{wnid}_{i}.JPEG", jpeg_bytes(k * 10 + i))
            add_to_tar(outer, f"{wnid}.tar", inner.getvalue())
    write_val_archive(root / "ILSVRC2012_img_val.tar", val_count)
    write_devkit(root / "ILSVRC2012_devkit_t12.tar.gz", val_count)


def test_class_folders_with_the_paper_crops(tmp_path: Path):
    write_image_folders(tmp_path, WNIDS, per_class=3)
    dm = ImageNetDataModule(root=str(tmp_path), num_classes=3, image_size=32, resize_size=36, batch_size=4,
                            num_workers=0, pin_memory=False)
    dm.setup()
    assert dm.classes == WNIDS and len(dm.train_set) == 9 and len(dm.test_set) == 9
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32)
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 0, 0, 1]


def test_archive_layout_is_unpacked_through_torchvision(tmp_path: Path, monkeypatch):
    # a stand-in archive cannot have the official MD5 sums: only that check is switched off
    monkeypatch.setattr(tv_imagenet, "_verify_archive", lambda root, file, md5: None)
    write_archives(tmp_path)
    dm = ImageNetDataModule(root=str(tmp_path), num_classes=3, image_size=32, resize_size=36, batch_size=6,
                            num_workers=0, pin_memory=False)
    dm.setup()
    assert dm.classes == WNIDS and len(dm.train_set) == 6 and len(dm.test_set) == 6
    assert dm.class_descriptions[WNIDS[1]] == "goldfish, Carassius auratus"
    _, labels = next(iter(dm.test_dataloader()))
    assert sorted(labels.tolist()) == sorted(label - 1 for label in val_labels(6))
    assert (tmp_path / "ILSVRC2012_img_val.tar").is_file()  # the archives are kept


def test_archive_without_devkit_asks_for_it(tmp_path: Path):
    write_archives(tmp_path)
    (tmp_path / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"ILSVRC2012_devkit_t12\.tar\.gz is not"):
        ImageNetDataModule(root=str(tmp_path), num_classes=3, num_workers=0).setup()


def test_without_folders_says_where_to_put_them(tmp_path: Path):
    dm = ImageNetDataModule(root=str(tmp_path / "imagenet"), num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"imagenet/train.*ILSVRC2012_img_train\.tar.*image-net.org"):
        dm.setup()


def test_unsorted_validation_images_point_to_the_script(tmp_path: Path):
    write_image_folders(tmp_path, WNIDS, per_class=1)
    for wnid in WNIDS:
        for image in (tmp_path / "val" / wnid).iterdir():
            image.rename(tmp_path / "val" / image.name)
        (tmp_path / "val" / wnid).rmdir()
    with pytest.raises(FileNotFoundError, match=r"unsorted.*imagenet_val_folders\.py"):
        ImageNetDataModule(root=str(tmp_path), num_classes=3, num_workers=0).setup()


def test_class_count_mismatch_is_refused(tmp_path: Path):
    write_image_folders(tmp_path, ["a", "b"], per_class=1)
    with pytest.raises(ValueError, match="train has 2 class folders"):
        ImageNetDataModule(root=str(tmp_path), num_classes=1000, num_workers=0).setup()


def test_corrupt_training_image_is_skipped_and_counted(tmp_path: Path):
    write_image_folders(tmp_path, WNIDS, per_class=2)
    broken = tmp_path / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"
    broken.write_bytes(broken.read_bytes()[:200])
    dm = ImageNetDataModule(root=str(tmp_path), num_classes=3, image_size=32, resize_size=36, batch_size=6,
                            num_workers=0, pin_memory=False)
    dm.setup()
    with pytest.warns(UserWarning, match=f"skipping cannot read image {broken}"):
        images, labels = next(iter(dm.train_dataloader()))
    assert len(labels) == 5
    with pytest.warns(UserWarning, match=r"1 unreadable image\(s\) were skipped \(1 in train"):
        dm.teardown("fit")
    strict = ImageNetDataModule(root=str(tmp_path), num_classes=3, image_size=32, strict=True, num_workers=0,
                                pin_memory=False)
    strict.setup()
    with pytest.raises(RuntimeError, match="strict=true"):
        next(iter(strict.train_dataloader()))


def test_fast_dev_run_through_hydra(tmp_path: Path, monkeypatch):
    write_image_folders(tmp_path / "imagenet", WNIDS, per_class=2)
    cfg = compose_train_config(tmp_path, [
        "data=imagenet", f"data.root={tmp_path / 'imagenet'}", "data.num_classes=null", "data.image_size=32",
        "data.resize_size=36", "data.num_workers=0", "data.batch_size=3", "data.pin_memory=false",
        "model.arch=resnet20", "trainer=cpu", "trainer.fast_dev_run=true", "logger=none", "callbacks=none",
    ])
    built = record_instantiated(monkeypatch)
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    model = next(obj for obj in built if isinstance(obj, ABNModule))  # handed the count; the config is left as it is
    assert model.hparams.num_classes == 3 and "test/acc" in metrics


# scripts/imagenet_val_folders.py

@pytest.mark.parametrize("labels_from", ["devkit archive", "devkit folder", "kaggle csv"])
def test_val_script_sorts_the_archive_into_class_folders(tmp_path: Path, labels_from: str):
    script = load_script("imagenet_val_folders")
    write_val_archive(tmp_path / "val.tar", 6)
    expected = {val_name(i): WNIDS[label - 1] for i, label in enumerate(val_labels(6))}
    if labels_from == "kaggle csv":
        lines = ["ImageId,PredictionString"] + [f"{Path(n).stem},{w} 1 2 30 40" for n, w in expected.items()]
        (tmp_path / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
        source = ["--labels", str(tmp_path / "LOC_val_solution.csv")]
    else:
        write_devkit(tmp_path / "devkit.tar.gz", 6)
        if labels_from == "devkit folder":
            with tarfile.open(tmp_path / "devkit.tar.gz") as archive:
                archive.extractall(tmp_path / "unpacked", filter="data")
            source = ["--devkit", str(tmp_path / "unpacked")]
        else:
            source = ["--devkit", str(tmp_path / "devkit.tar.gz")]
    out = tmp_path / "imagenet" / "val"
    assert script.main(["--val", str(tmp_path / "val.tar"), *source, "--out", str(out)]) == 0
    found = {p.name: p.parent.name for p in out.glob("*/*.JPEG")}
    assert found == expected
    assert (out / expected[val_name(0)] / val_name(0)).read_bytes() == jpeg_bytes(100)
    assert script.main(["--val", str(tmp_path / "val.tar"), *source, "--out", str(out)]) == 0  # again: skips all
    assert (tmp_path / "val.tar").is_file() and not list(out.glob("*/*.part"))


def test_val_script_moves_unpacked_images_in_place(tmp_path: Path):
    script = load_script("imagenet_val_folders")
    val = tmp_path / "val"
    val.mkdir()
    for i in range(6):
        (val / val_name(i)).write_bytes(jpeg_bytes(100 + i))
    write_devkit(tmp_path / "devkit.tar.gz", 6)
    script.main(["--val", str(val), "--devkit", str(tmp_path / "devkit.tar.gz"), "--out", str(val), "--move"])
    assert not list(val.glob("*.JPEG")) and len(list(val.glob("*/*.JPEG"))) == 6


def test_val_script_refuses_labels_of_other_images(tmp_path: Path):
    script = load_script("imagenet_val_folders")
    write_val_archive(tmp_path / "val.tar", 6)
    write_devkit(tmp_path / "devkit.tar.gz", 4)
    with pytest.raises(ValueError, match="lists 4 validation images but 6"):
        script.main(["--val", str(tmp_path / "val.tar"), "--devkit", str(tmp_path / "devkit.tar.gz"),
                     "--out", str(tmp_path / "out")])
    (tmp_path / "bad.txt").write_text("ILSVRC2012_val_00000001 goldfish\n")
    with pytest.raises(ValueError, match=r"bad\.txt, line 1"):
        script.main(["--val", str(tmp_path / "val.tar"), "--labels", str(tmp_path / "bad.txt"),
                     "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
