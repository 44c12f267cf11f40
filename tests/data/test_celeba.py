"""CelebA data module on a stand-in copy in the real on-disk format (12 images of 32×40 pixels, 6/3/3 partitions)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from torchvision import transforms

import abn.module
from abn.data.celeba import ATTRIBUTE_FILE, ATTRIBUTE_NAMES, PARTITION_FILE, CelebADataModule
from abn.data.images import UnreadableImageError, load_image
from abn.data.standins import write_standin_celeba
from abn.module import ABNModule
from abn.train import train

from ..conftest import compose_train_config

SIZE = (32, 40)  # width, height of the stand-in images


@pytest.fixture
def celeba(tmp_path: Path) -> Path:
    """``<tmp>/celeba`` with 12 images: 000001-000006 train, 000007-000009 valid, 000010-000012 test."""
    return write_standin_celeba(tmp_path, num_images=12, image_size=SIZE)


def make_module(folder: Path, **options) -> CelebADataModule:
    settings = dict(image_size=32, batch_size=4, num_workers=0, pin_memory=False) | options
    return CelebADataModule(root=str(folder.parent), **settings)


def file_values(folder: Path) -> dict[str, list[int]]:
    """The attribute rows as written, read independently of the module: name → 40 values in {-1, 1}."""
    lines = (folder / ATTRIBUTE_FILE).read_text().splitlines()[2:]
    return {fields[0]: [int(v) for v in fields[1:]] for fields in (line.split() for line in lines)}


def test_official_partitions_give_the_three_splits(celeba: Path):
    dm = make_module(celeba)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (6, 3, 3)
    assert [Path(p).name for p in dm.val_set.paths] == ["000007.jpg", "000008.jpg", "000009.jpg"]
    assert [Path(p).name for p in dm.test_set.paths] == ["000010.jpg", "000011.jpg", "000012.jpg"]

    on_test = make_module(celeba, use_official_val=False)
    on_test.setup()
    assert on_test.val_set is on_test.test_set and len(on_test.train_set) == 6


def test_multitask_targets_are_the_files_values_as_zeros_and_ones(celeba: Path):
    dm = make_module(celeba)
    dm.setup()
    assert dm.task == "multilabel" and dm.num_classes == 40 and dm.classes == list(ATTRIBUTE_NAMES)
    values = file_values(celeba)
    for split in (dm.train_set, dm.val_set, dm.test_set):
        for path, target in zip(split.paths, split.targets):
            expected = torch.tensor([(v + 1) // 2 for v in values[Path(path).name]], dtype=torch.float32)
            assert target.dtype == torch.float32 and torch.equal(target, expected)
    images, targets = next(iter(dm.test_dataloader()))
    assert targets.shape == (3, 40) and targets.dtype == torch.float32
    assert set(targets.unique().tolist()) == {0.0, 1.0}


def test_single_attribute_gives_two_classes_and_int_labels(celeba: Path):
    dm = make_module(celeba, attribute="Smiling")
    dm.setup()
    assert dm.task == "multiclass" and dm.num_classes == 2 and dm.classes == ["not Smiling", "Smiling"]
    column = ATTRIBUTE_NAMES.index("Smiling")
    values = file_values(celeba)
    labels = [(values[Path(p).name][column] + 1) // 2 for p in dm.train_set.paths]
    assert dm.train_set.targets == labels and all(isinstance(label, int) for label in labels)
    _, batch_labels = next(iter(dm.val_dataloader()))
    assert batch_labels.dtype == torch.int64 and batch_labels.tolist() == [
        (values[Path(p).name][column] + 1) // 2 for p in dm.val_set.paths]


@pytest.mark.parametrize("image_size", [32, 48])
def test_images_are_resized_to_a_square(celeba: Path, image_size: int):
    dm = make_module(celeba, image_size=image_size)
    dm.setup()
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, image_size, image_size) and images.dtype == torch.float32


def test_normalisation_round_trips_to_the_resized_image(celeba: Path):
    dm = make_module(celeba, image_size=36)
    dm.setup()
    images, _ = next(iter(dm.test_dataloader()))
    resize = transforms.Compose([transforms.Resize((36, 36)), transforms.ToTensor()])
    resized = torch.stack([resize(load_image(path)) for path in dm.test_set.paths])
    assert images.mean() < 0.5  # normalised, not raw [0, 1] pixels
    torch.testing.assert_close(dm.denormalize(images), resized, atol=1e-5, rtol=0)
    assert dm.mean == (0.485, 0.456, 0.406) and dm.std == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("hflip", [True, False])
def test_training_images_are_flipped_only_with_hflip(celeba: Path, hflip: bool):
    dm = make_module(celeba, hflip=hflip)
    dm.setup()
    torch.manual_seed(0)
    plain = dm._transform(train=False)(load_image(dm.train_set.paths[0]))
    seen = {"plain": 0, "flipped": 0}
    for _ in range(20):
        image, _ = dm.train_set[0]
        seen["plain"] += torch.allclose(image, plain)
        seen["flipped"] += torch.allclose(image, plain.flip(-1))
    assert seen["plain"] + seen["flipped"] == 20
    assert (seen["flipped"] > 0) == hflip and seen["plain"] > 0
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0])  # evaluation images are never flipped


def test_discover_classes_reads_only_the_header(celeba: Path):
    (celeba / ATTRIBUTE_FILE).write_text("202599\n" + " ".join(ATTRIBUTE_NAMES) + "\n")  # rows and images not needed
    for path in (celeba / "img_align_celeba").iterdir():
        path.unlink()
    dm = make_module(celeba)
    assert dm.discover_classes() == list(ATTRIBUTE_NAMES) and dm.num_classes == 40 and dm.task == "multilabel"
    single = make_module(celeba, attribute="Eyeglasses")
    assert single.discover_classes() == ["not Eyeglasses", "Eyeglasses"] and single.task == "multiclass"
    assert single.state_dict() == {"classes": ["not Eyeglasses", "Eyeglasses"], "task": "multiclass"}


def test_unknown_attribute_lists_the_valid_names(celeba: Path):
    dm = make_module(celeba, attribute="smiling")
    with pytest.raises(ValueError, match=r"attribute=smiling.*did you mean Smiling\?.*5_o_Clock_Shadow, .*, Young"):
        dm.discover_classes()
    with pytest.raises(ValueError, match="not a CelebA attribute"):
        make_module(celeba, attribute="Happy").setup()


def test_contradictory_num_classes_and_channels_are_refused():
    with pytest.raises(ValueError, match=r"40 outputs but data.num_classes=2.*null"):
        CelebADataModule(num_classes=2)
    with pytest.raises(ValueError, match=r"attribute=Smiling.*2 outputs but data.num_classes=40"):
        CelebADataModule(attribute="Smiling", num_classes=40)
    with pytest.raises(ValueError, match="in_chans must be 3"):
        CelebADataModule(in_chans=1)
    assert CelebADataModule(num_classes=40).task == "multilabel"


def replace_line(path: Path, number: int, edit) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = edit(lines[number - 1])
    path.write_text("\n".join(lines) + "\n")


def test_39_attribute_names_are_refused_naming_the_file(celeba: Path):
    replace_line(celeba / ATTRIBUTE_FILE, 2, lambda line: line.replace("Young", ""))
    with pytest.raises(ValueError, match=r"list_attr_celeba\.txt, line 2: expected the 40 attribute names, found 39"):
        make_module(celeba).discover_classes()


def test_a_row_with_41_values_is_refused_naming_file_and_line(celeba: Path):
    replace_line(celeba / ATTRIBUTE_FILE, 7, lambda line: line + "  1")
    with pytest.raises(ValueError, match=r"list_attr_celeba\.txt, line 7: .*found 41 values"):
        make_module(celeba).setup()


def test_values_other_than_minus_one_and_one_are_refused(celeba: Path):
    replace_line(celeba / ATTRIBUTE_FILE, 4, lambda line: line[:-2] + " 0")
    message = r"list_attr_celeba\.txt, line 4: attribute values must be -1 or 1, found \['0'\]"
    with pytest.raises(ValueError, match=message):
        make_module(celeba).setup()


def test_a_truncated_attribute_file_is_refused(celeba: Path):
    path = celeba / ATTRIBUTE_FILE
    path.write_text("\n".join(path.read_text().splitlines()[:-2]) + "\n")
    with pytest.raises(ValueError, match="line 1 announces 12 images but the file lists 10"):
        make_module(celeba).setup()


def test_bad_partition_lines_and_unlabelled_images_are_refused(celeba: Path):
    partition = celeba / PARTITION_FILE
    original = partition.read_text()
    partition.write_text(original + "000013.jpg 3\n")
    with pytest.raises(ValueError, match=r"list_eval_partition\.txt, line 13: expected '<image> <0\|1\|2>'"):
        make_module(celeba).setup()
    partition.write_text(original + "000013.jpg 2\n")
    message = r"1 image\(s\) of .*list_eval_partition\.txt have no row .*first: 000013\.jpg"
    with pytest.raises(ValueError, match=message):
        make_module(celeba).setup()


@pytest.mark.parametrize("missing", [ATTRIBUTE_FILE, PARTITION_FILE, "img_align_celeba"])
def test_missing_files_are_named_with_where_to_get_celeba(celeba: Path, missing: str):
    target = celeba / missing
    if target.is_dir():
        for path in target.iterdir():
            path.unlink()
        target.rmdir()
    else:
        target.unlink()
    message = (rf"celeba/{missing} not found.*mmlab\.ie\.cuhk\.edu\.hk/projects/CelebA"
               r".*img_align_celeba\.zip \(folder Img\).*\(folder Anno\).*\(folder Eval\)")
    with pytest.raises(FileNotFoundError, match=message):
        make_module(celeba).setup()


def test_no_celeba_folder_names_all_three_and_the_discovery_file(tmp_path: Path):
    all_three = r"img_align_celeba, .*list_attr_celeba\.txt, .*list_eval_partition\.txt"
    with pytest.raises(FileNotFoundError, match=all_three):
        CelebADataModule(root=str(tmp_path)).setup()
    with pytest.raises(FileNotFoundError, match=r"celeba/list_attr_celeba\.txt not found"):
        CelebADataModule(root=str(tmp_path)).discover_classes()


def test_missing_images_are_left_out_with_one_warning(celeba: Path):
    for name in ("000002.jpg", "000011.jpg"):
        (celeba / "img_align_celeba" / name).unlink()
    message = r"2 image\(s\) listed in .* are missing .*first: .*000002\.jpg, .*000011\.jpg"
    with pytest.warns(UserWarning, match=message) as caught:
        dm = make_module(celeba)
        dm.setup()
    assert len([w for w in caught if "missing" in str(w.message)]) == 1
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (5, 3, 2)


def test_png_copies_of_the_aligned_faces_are_found(celeba: Path):
    jpg = celeba / "img_align_celeba" / "000003.jpg"
    load_image(str(jpg)).save(jpg.with_suffix(".png"))
    jpg.unlink()
    dm = make_module(celeba)
    dm.setup()
    assert Path(dm.train_set.paths[2]).name == "000003.png" and len(dm.train_set) == 6


def test_an_empty_split_is_an_error(celeba: Path):
    partition = celeba / PARTITION_FILE
    partition.write_text(partition.read_text().replace(" 1\n", " 0\n"))
    with pytest.raises(ValueError, match=r"the val split is empty \(.*list_eval_partition\.txt"):
        make_module(celeba).setup()
    dm = make_module(celeba, use_official_val=False)  # validating on test needs no valid partition
    dm.setup()
    assert len(dm.train_set) == 9


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def test_corrupt_image_is_skipped_with_a_warning(celeba: Path):
    truncate(celeba / "img_align_celeba" / "000011.jpg")
    dm = make_module(celeba)
    dm.setup()
    with pytest.warns(UserWarning, match=r"skipping cannot read image .*000011\.jpg"):
        images, targets = next(iter(dm.test_dataloader()))
    assert images.shape[0] == 2 and targets.shape == (2, 40)
    with pytest.warns(UserWarning, match=r"1 unreadable image\(s\) were skipped \(1 in test"):
        found = dm.report_unreadable()
    assert [Path(p).name for p in found["test"]] == ["000011.jpg"]


def test_corrupt_image_stops_a_strict_run(celeba: Path):
    truncate(celeba / "img_align_celeba" / "000011.jpg")
    dm = make_module(celeba, strict=True)
    dm.setup()
    with pytest.raises(UnreadableImageError, match=r"000011\.jpg.*data\.strict=true"):
        next(iter(dm.test_dataloader()))


def test_the_standin_writer_never_overwrites(celeba: Path):
    before = (celeba / ATTRIBUTE_FILE).read_text()
    with pytest.raises(FileExistsError, match="list_attr_celeba.txt exists"):
        write_standin_celeba(celeba.parent)
    assert (celeba / ATTRIBUTE_FILE).read_text() == before
    lines = before.splitlines()
    assert lines[0] == "12" and lines[1].split() == list(ATTRIBUTE_NAMES)
    assert lines[2].startswith("000001.jpg ") and len(lines) == 14


class RecordedModule(ABNModule):
    """``ABNModule`` that remembers the instances ``abn-train`` builds, to inspect the real model."""

    built: list[ABNModule] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RecordedModule.built.append(self)


def fast_dev_run(tmp_path: Path, celeba: Path, extra: list[str], monkeypatch) -> tuple[dict, ABNModule]:
    cfg = compose_train_config(tmp_path, [
        "data=celeba", f"data.root={celeba.parent}", "data.image_size=32", "data.num_workers=0", "data.batch_size=4",
        "data.pin_memory=false", "model.arch=resnet20", "trainer=cpu", "trainer.fast_dev_run=true", "logger=none",
        "callbacks=none", f"paths.output_dir={tmp_path}", *extra,
    ])
    monkeypatch.setattr(RecordedModule, "built", [])
    monkeypatch.setattr(abn.module, "ABNModule", RecordedModule)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            metrics = train(cfg)
    finally:
        GlobalHydra.instance().clear()
    [model] = RecordedModule.built
    return metrics, model


def logits_of(model: ABNModule) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.zeros(2, 3, 32, 32)).logits


def test_fast_dev_run_multitask(tmp_path: Path, celeba: Path, monkeypatch):
    metrics, model = fast_dev_run(tmp_path, celeba, [], monkeypatch)
    assert model.hparams.task == "multilabel" and model.hparams.num_classes == 40
    assert logits_of(model).shape == (2, 40)
    assert 0.0 <= metrics["val/acc"] <= 1.0 and "val/acc_att" in metrics and "test/acc" in metrics


def test_fast_dev_run_single_attribute(tmp_path: Path, celeba: Path, monkeypatch):
    metrics, model = fast_dev_run(tmp_path, celeba, ["data.attribute=Smiling"], monkeypatch)
    assert model.hparams.task == "multiclass" and model.hparams.num_classes == 2
    assert logits_of(model).shape == (2, 2)
    assert 0.0 <= metrics["val/acc"] <= 1.0 and "test/acc" in metrics
