"""CompCars (web-nature) data module on a tiny stand-in written in the real on-disk layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torchvision import transforms
from torchvision.transforms import v2

from abn.data.compcars import HOMEPAGE, CompCarsDataModule, Letterbox, crop_box
from abn.data.images import UnreadableImageError, load_image
from abn.data.standins import write_standin_compcars
from abn.module import ABNModule
from abn.train import train

from ..conftest import compose_train_config, record_instantiated

CARS = ((1, 3), (1, 7), (2, 12))  # model ids with gaps; two makes


def make_module(root: Path, **options) -> CompCarsDataModule:
    options = {"image_size": (32, 32), "batch_size": 4, "num_workers": 0, "pin_memory": False, **options}
    return CompCarsDataModule(root=str(root), **options)


@pytest.fixture
def standin(tmp_path: Path) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path / "compcars"
    return root, write_standin_compcars(root, cars=CARS)


def test_split_lengths_and_contiguous_labels_for_model_ids_with_gaps(standin):
    root, listed = standin
    dm = make_module(root)
    dm.setup()
    assert len(dm.train_set) == 12 and len(dm.test_set) == 6 and dm.val_set is dm.test_set
    assert dm.label_to_id == [3, 7, 12] and dm.num_classes == 3
    for dataset, split in ((dm.train_set, "train"), (dm.test_set, "test")):
        expected = [{3: 0, 7: 1, 12: 2}[int(path.split("/")[1])] for path in listed[split]]
        assert dataset.targets == expected
    assert dm.classes == ["Make1 Model3", "Make1 Model7", "Make2 Model12"]
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (4, 3, 32, 32) and labels.dtype == torch.int64


def test_make_task_labels_and_names(standin):
    root, listed = standin
    dm = make_module(root, classify="make")
    dm.setup()
    assert dm.label_to_id == [1, 2] and dm.classes == ["Make1", "Make2"]
    assert dm.train_set.targets == [int(path.split("/")[0]) - 1 for path in listed["train"]]


def test_empty_model_name_in_the_mat_gets_a_fallback(tmp_path):
    write_standin_compcars(tmp_path, cars=CARS, unnamed_models=(7,))
    dm = make_module(tmp_path)
    assert dm.discover_classes() == ["Make1 Model3", "Make1 model 7", "Make2 Model12"]


def test_discover_classes_reads_no_image(standin):
    root, _ = standin
    for image in (root / "image").rglob("*.jpg"):
        image.unlink()
    dm = make_module(root, num_classes=None)
    assert dm.discover_classes() == ["Make1 Model3", "Make1 Model7", "Make2 Model12"] and dm.num_classes == 3
    with pytest.raises(ValueError, match="data.num_classes=3"):
        make_module(root, num_classes=5).discover_classes()


def _mean_colour(dm: CompCarsDataModule) -> torch.Tensor:
    images, _ = next(iter(dm.test_dataloader()))
    return dm.denormalize(images).mean(dim=(0, 2, 3))


def test_crop_to_box_gives_the_box_content(standin):
    root, _ = standin
    whole = make_module(root, keep_aspect=False)
    whole.setup()
    cropped = make_module(root, keep_aspect=False, crop_to_box=True)
    cropped.setup()
    red, green, blue = _mean_colour(cropped).tolist()
    assert red > 0.8 and blue < 0.25  # the box is filled with (230, 30, 30)
    red, green, blue = _mean_colour(whole).tolist()
    assert red < 0.6 and blue > 0.3  # the whole image has its blue (20, 60, 220) background too


def test_a_box_past_the_edges_is_clamped_to_the_image(standin):
    root, listed = standin
    for relative in listed["test"]:
        (root / "label" / relative).with_suffix(".txt").write_text("3\n1\n-5 0 999 999\n")
    dm = make_module(root, keep_aspect=False, crop_to_box=True)
    dm.setup()
    uncropped = make_module(root, keep_aspect=False)
    uncropped.setup()
    torch.testing.assert_close(next(iter(dm.test_dataloader()))[0], next(iter(uncropped.test_dataloader()))[0])
    assert crop_box((1, 1, 10, 5), 64, 48) == (0, 0, 10, 5)  # 1-based inclusive → PIL's 0-based, end exclusive
    assert crop_box((-3, 0, 100, 60), 64, 48) == (0, 0, 64, 48)
    assert crop_box((70, 50, 80, 60), 64, 48) == (63, 47, 64, 48)  # wholly outside: one pixel, never empty


def test_letterbox_keeps_the_aspect_and_pads_with_black(standin):
    root, _ = standin  # images are 48×64 (height × width): fit into 32×32 gives 24×32, 4 black rows above and below
    dm = make_module(root, image_size=[32, 32])
    dm.setup()
    images, _ = next(iter(dm.test_dataloader()))
    shown = dm.denormalize(images)
    assert shown.shape == (4, 3, 32, 32)
    assert shown[:, :, :4].abs().max() < 1e-5 and shown[:, :, 28:].abs().max() < 1e-5
    assert shown[:, :, 4:28].sum(dim=1).min() > 0.1
    stretched = make_module(root, image_size=[32, 32], keep_aspect=False)
    stretched.setup()
    assert stretched.denormalize(next(iter(stretched.test_dataloader()))[0]).sum(dim=1).min() > 0.1
    assert Letterbox(10, 40)(load_image(dm.test_set.paths[0])).size == (40, 10)


def test_normalisation_is_imagenets_and_denormalize_undoes_it(standin):
    root, _ = standin
    dm = make_module(root)
    dm.setup()
    assert tuple(dm.mean) == (0.485, 0.456, 0.406) and tuple(dm.std) == (0.229, 0.224, 0.225)
    images, _ = next(iter(dm.test_dataloader()))
    raw = torch.stack([transforms.ToTensor()(Letterbox(32, 32)(load_image(path))) for path in dm.test_set.paths[:4]])
    torch.testing.assert_close(dm.denormalize(images), raw, atol=1e-5, rtol=0)


def flips(dataset) -> bool:
    return any(isinstance(step, v2.RandomHorizontalFlip) for step in dataset.transform.transforms)


def test_held_out_validation_is_seeded_disjoint_and_not_augmented(standin):
    root, _ = standin
    splits = []
    for _ in range(2):
        dm = make_module(root, val_size=4, seed=3)
        dm.setup()
        splits.append((sorted(dm.train_set.indices), sorted(dm.val_set.indices)))
    (train_idx, val_idx), again = splits
    assert len(train_idx) == 8 and len(val_idx) == 4 and not set(train_idx) & set(val_idx)
    assert again == (train_idx, val_idx)
    other = make_module(root, val_size=4, seed=4)
    other.setup()
    assert sorted(other.val_set.indices) != val_idx
    assert flips(dm.train_set.dataset) and not flips(dm.val_set.dataset)


def test_state_dict_round_trip_and_refusal_of_another_mapping(standin, tmp_path):
    root, _ = standin
    dm = make_module(root)
    dm.setup()
    state = dm.state_dict()
    assert state["label_to_id"] == [3, 7, 12] and state["classify"] == "model"
    fresh = make_module(root)
    fresh.load_state_dict(state)  # finds its own mapping from the split files first
    assert fresh.label_to_id == [3, 7, 12]

    other_root = tmp_path / "other"
    write_standin_compcars(other_root, cars=((1, 3), (1, 7), (2, 13)))
    other = make_module(other_root)
    other.setup()
    with pytest.raises(ValueError, match="other car model ids.*label 2: id 12 in the checkpoint, 13 here"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="data.classify=model"):
        make_module(root, classify="make").load_state_dict(state)


def test_missing_listed_files_are_left_out_with_one_warning(standin):
    root, listed = standin
    for relative in listed["train"][:2]:
        (root / "image" / relative).unlink()
    (root / "label" / listed["test"][0]).with_suffix(".txt").unlink()
    dm = make_module(root)
    with pytest.warns(UserWarning, match=r"2 of 12 train images .* have no image file \(first: .*\.jpg") as caught:
        dm.setup()
    assert len([w for w in caught if "have no" in str(w.message)]) == 1  # labels are not needed without crop_to_box
    assert len(dm.train_set) == 10 and len(dm.test_set) == 6

    boxed = make_module(root, crop_to_box=True)
    with pytest.warns(UserWarning) as caught:
        boxed.setup()
    assert any("1 of 6 test images" in str(w.message) and "no image or label file" in str(w.message) for w in caught)
    assert len(boxed.test_set) == 5

    for relative in listed["test"]:
        (root / "image" / relative).unlink()
    with pytest.raises(FileNotFoundError, match="the test split has no images left"), pytest.warns(UserWarning):
        make_module(root).setup()  # (the warning: the two training images still missing)


@pytest.mark.parametrize("missing", ["root", "image", "split", "mat", "label"])
def test_missing_data_is_one_clear_error(standin, missing):
    root, _ = standin
    gone = {
        "root": root,
        "image": root / "image",
        "split": root / "train_test_split" / "classification" / "test.txt",
        "mat": root / "misc" / "make_model_name.mat",
        "label": root / "label",
    }[missing]
    if missing == "root":
        root = root.parent / "nowhere"
        gone = root
    elif gone.is_dir():
        gone.rename(gone.with_name("moved"))
    else:
        gone.unlink()
    dm = make_module(root, crop_to_box=missing == "label")
    for action in (dm.setup, dm.discover_classes):
        with pytest.raises(FileNotFoundError) as raised:
            action()
        message = str(raised.value)
        assert str(gone) in message and HOMEPAGE in message and "data.root" in message


def test_test_ids_absent_from_training_and_bad_split_lines_are_errors(standin):
    root, _ = standin
    test_file = root / "train_test_split" / "classification" / "test.txt"
    test_file.write_text(test_file.read_text() + "2/99/2014/abc.jpg\n")
    with pytest.raises(ValueError, match=r"1 test image.* car model id\(s\) .* \(99; first: 2/99/2014/abc.jpg\)"):
        make_module(root).discover_classes()
    test_file.write_text("not-a-path.jpg\n")
    with pytest.raises(ValueError, match="test.txt, line 1: expected make_id/model_id/year/name.jpg"):
        make_module(root).setup()


def test_a_malformed_label_file_is_named(standin):
    root, listed = standin
    label = (root / "label" / listed["train"][0]).with_suffix(".txt")
    label.write_text("3\n1\n")
    with pytest.raises(ValueError, match=f"{label}: expected three lines"):
        make_module(root, crop_to_box=True).setup()


def _truncate_first_test_image(root: Path, listed: dict[str, list[str]]) -> str:
    path = root / "image" / listed["test"][0]
    path.write_bytes(path.read_bytes()[:300])
    return str(path)


def test_a_corrupt_image_is_skipped_with_a_warning(standin):
    root, listed = standin
    bad = _truncate_first_test_image(root, listed)
    dm = make_module(root)
    dm.setup()
    with pytest.warns(UserWarning, match="skipping cannot read image"):
        images, labels = next(iter(dm.test_dataloader()))
    assert images.shape[0] == 3 and labels.shape == (3,)
    with pytest.warns(UserWarning, match="1 unreadable image"):
        found = dm.report_unreadable()
    assert list(found.values()) == [[bad]]  # counted once (validation runs on the test set here)


def test_a_corrupt_image_stops_a_strict_run(standin):
    root, listed = standin
    _truncate_first_test_image(root, listed)
    dm = make_module(root, strict=True, crop_to_box=True)
    dm.setup()
    with pytest.raises(UnreadableImageError, match="data.strict=true"):
        next(iter(dm.test_dataloader()))


def test_the_config_has_the_papers_settings(tmp_path):
    cfg = compose_train_config(tmp_path, ["data=compcars"])
    GlobalHydra.instance().clear()
    assert cfg.data.root.endswith("/data/compcars") and cfg.data.num_classes is None
    assert list(cfg.data.image_size) == [224, 323] and cfg.data.keep_aspect and cfg.data.batch_size == 32
    dm = instantiate(cfg.data)
    assert isinstance(dm, CompCarsDataModule) and dm.image_size == (224, 323) and dm.classify == "model"


def test_fast_dev_run_through_hydra_gives_the_model_the_class_count(standin, tmp_path, monkeypatch):
    root, _ = standin
    overrides = [
        "data=compcars",
        f"data.root={root}",
        "data.image_size=[32,48]",
        "data.num_workers=0",
        "data.pin_memory=false",
        "data.batch_size=4",
        "model.arch=resnet20",
        "trainer=cpu",
        "trainer.fast_dev_run=true",
        "logger=none",
        "callbacks=none",
        f"paths.output_dir={tmp_path}",
    ]
    cfg = compose_train_config(tmp_path, overrides)
    assert cfg.data.num_classes is None
    built = record_instantiated(monkeypatch)
    try:
        metrics = train(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert 0.0 <= metrics["test/acc"] <= 1.0
    model = next(obj for obj in built if isinstance(obj, ABNModule))
    assert model.hparams.num_classes == 3 and model.hparams.task == "multiclass"
    assert model(torch.zeros(1, 3, 32, 48)).logits.shape == (1, 3)
    assert cfg.data.classify == "model"


@pytest.mark.parametrize(
    ("option", "message"),
    [({"classify": "year"}, "classify must be 'model' or 'make'"), ({"in_chans": 1}, "in_chans must be 3"),
     ({"image_size": [32]}, r"image_size must be \[height, width\]"), ({"val_size": -1}, "val_size must be ≥ 0")],
)
def test_bad_options_are_named(tmp_path, option, message):
    with pytest.raises(ValueError, match=message):
        make_module(tmp_path, **option)
