"""CompCars, web-nature part: car model (431 classes) or car make (75) classification on the official split.

The layout is that of the official ``data.zip``, unpacked in ``root``:

    image/<make_id>/<model_id>/<year>/<name>.jpg        the photos
    label/<make_id>/<model_id>/<year>/<name>.txt        viewpoint, box count (1), box "x1 y1 x2 y2" (1-based pixels)
    misc/make_model_name.mat                            make_names (163) and model_names (2004), MATLAB cells
    train_test_split/classification/{train,test}.txt    one "make/model/year/name.jpg" per line

Model (or make) ids have gaps, so the ids of the training split are mapped to labels 0..K-1 in id order; the
mapping (``label_to_id``) is saved in every checkpoint. Following the ABN paper, images are resized to 323×224
(width × height); by default keeping their aspect ratio, padded with black (letterbox). Never downloads: the data
is released on request only.

With ``car_boxes=True`` every sample also carries its car's labelled box, for attention supervision: batches are
``(images, labels, boxes)``, each box float (x0, y0, x1, y1) in the pixels of the transformed image (x1/y1
exclusive), carried through the flip and the resize or letterbox as a ``tv_tensors.BoundingBoxes``. An image
without a label file, or whose box lies wholly outside it, has a box of NaN (it trains without supervision).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Optional, Sequence

import numpy as np
import scipy.io
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from .base import IMAGENET_MEAN, IMAGENET_STD, ClassificationDataModule, check_supervised_fraction
from .images import ImageFiles


HOMEPAGE = "http://mmlab.ie.cuhk.edu.hk/datasets/comp_cars/"
SPLIT_FOLDER = os.path.join("train_test_split", "classification")
NAMES_FILE = os.path.join("misc", "make_model_name.mat")
CLASSIFY_CHOICES = ("model", "make")
SHOWN_PATHS = 3  # how many missing files a warning names

Box = tuple[int, int, int, int]
PixelBox = tuple[float, float, float, float]  # 0-based, x1/y1 exclusive
Entry = tuple[str, int, int]  # a split file's line: relative path, make id, model id


class Letterbox:
    """Resize to fit inside ``height`` × ``width`` keeping the aspect ratio, then pad with black to exactly that size,
    centred: a car is not squashed, and every image of a batch has the same shape.

    Takes a PIL image, optionally followed by ``tv_tensors.BoundingBoxes`` of it (as a step of ``v2.Compose``),
    and moves the boxes with the image."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width

    def __call__(self, image: Image.Image, *boxes: tv_tensors.BoundingBoxes) -> Any:
        scale = min(self.height / image.height, self.width / image.width)
        new_width = min(self.width, max(1, round(image.width * scale)))
        new_height = min(self.height, max(1, round(image.height * scale)))
        left, top = (self.width - new_width) // 2, (self.height - new_height) // 2
        padding = [left, top, self.width - new_width - left, self.height - new_height - top]  # black: 0 before norm.
        moved = [v2.functional.pad(v2.functional.resize(item, [new_height, new_width],
                                                        interpolation=v2.InterpolationMode.BILINEAR), padding)
                 for item in (image, *boxes)]
        return tuple(moved) if boxes else moved[0]

    def __repr__(self) -> str:
        return f"Letterbox(height={self.height}, width={self.width})"


def crop_box(box: Box, width: int, height: int) -> Box:
    """The PIL crop box (0-based, right/bottom exclusive) of a CompCars box (1-based, inclusive), clamped to the image:
    a box that runs past an edge would otherwise be padded with black by PIL."""
    x1, y1, x2, y2 = box
    left = min(max(x1 - 1, 0), width - 1)
    top = min(max(y1 - 1, 0), height - 1)
    right = max(min(x2, width), left + 1)
    bottom = max(min(y2, height), top + 1)
    return left, top, right, bottom


def pixel_box(box: Box, width: int, height: int) -> Optional[PixelBox]:
    """A CompCars box (1-based, inclusive) as 0-based pixel edges (x1/y1 exclusive) clamped to the image; None where
    no part of it lies inside the image (unlike ``crop_box``, a box to supervise with is never made up)."""
    x1, y1, x2, y2 = box
    left, top = max(x1 - 1, 0), max(y1 - 1, 0)
    right, bottom = min(x2, width), min(y2, height)
    if right <= left or bottom <= top:
        return None
    return float(left), float(top), float(right), float(bottom)


class CarBoxImages(ImageFiles):
    """``ImageFiles`` cropped to each car's labelled box (clamped to the image, which needs the decoded size)."""

    def __init__(self, paths: Sequence[str], targets: Sequence[int], boxes: Sequence[Box],
                 transform: Optional[Callable], strict: bool):
        super().__init__(paths, targets, transform=None, strict=strict)
        if len(boxes) != len(paths):
            raise ValueError("paths and boxes must have the same length")
        self.car_boxes = list(boxes)
        self.crop_transform = transform

    def __getitem__(self, index: int) -> Optional[tuple[Any, int]]:
        sample = super().__getitem__(index)
        if sample is None:
            return None
        image, target = sample
        image = image.crop(crop_box(self.car_boxes[index], image.width, image.height))
        return (self.crop_transform(image) if self.crop_transform is not None else image), target


class ImagesWithCarBoxes(ImageFiles):
    """``(image, target, box)`` triples: the box (None where unknown) goes through ``transform`` with the image as a
    ``tv_tensors.BoundingBoxes``, and comes out as a float tensor (x0, y0, x1, y1) in the transformed image's pixels,
    x1/y1 exclusive; NaN where the image has no box."""

    def __init__(self, paths: Sequence[str], targets: Sequence[int], boxes: Sequence[Optional[Box]],
                 transform: Callable, strict: bool):
        super().__init__(paths, targets, transform=None, strict=strict)
        if len(boxes) != len(paths):
            raise ValueError("paths and boxes must have the same length")
        self.car_boxes = list(boxes)
        self.joint_transform = transform

    def __getitem__(self, index: int) -> Optional[tuple[Any, int, Tensor]]:
        sample = super().__getitem__(index)
        if sample is None:
            return None
        image, target = sample
        box = self.car_boxes[index]
        inside = pixel_box(box, image.width, image.height) if box is not None else None
        if inside is None:
            return self.joint_transform(image), target, torch.full((4,), float("nan"))
        boxes = tv_tensors.BoundingBoxes([inside], format="XYXY", canvas_size=(image.height, image.width),
                                         dtype=torch.float32)
        image, boxes = self.joint_transform(image, boxes)
        return image, target, boxes.reshape(4)


def check_box_options(crop_to_box: bool, car_boxes: bool, supervised_fraction: float) -> None:
    """``car_boxes`` with ``crop_to_box`` is refused: the crop is the box itself (no margin), so the box would cover
    the whole cropped image and tell the attention map nothing."""
    if car_boxes and crop_to_box:
        raise ValueError("data.car_boxes=true with data.crop_to_box=true: the crop is the car's box itself, so the box "
                         "handed over would cover the whole image and supervise nothing; set data.crop_to_box=false "
                         "to supervise the attention map with the boxes, or data.car_boxes=false to train on the crops")
    if check_supervised_fraction(supervised_fraction) < 1.0 and not car_boxes:
        raise ValueError(f"data.supervised_fraction={supervised_fraction} keeps the boxes of a share of the training "
                         "images, but data.car_boxes=false hands over none; set data.car_boxes=true, or "
                         "data.supervised_fraction=1.0")


def read_split_file(path: str) -> list[Entry]:
    """``(relative path, make id, model id)`` for each line ``make/model/year/name.jpg`` of a split file."""
    entries = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            relative = line.strip().replace("\\", "/")
            if not relative:
                continue
            parts = relative.split("/")
            if len(parts) != 4 or not parts[0].isdigit() or not parts[1].isdigit():
                raise ValueError(f"{path}, line {number}: expected make_id/model_id/year/name.jpg, got {relative!r}; "
                                 "use the split files of the official data.zip")
            entries.append((relative, int(parts[0]), int(parts[1])))
    return entries


def read_label_box(path: str, option: str = "crop_to_box") -> Box:
    """The box of a label file: line 1 viewpoint, line 2 the number of boxes, line 3 ``x1 y1 x2 y2``; ``option`` is
    the data option that reads it (the message says what deleting the file does under it)."""
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    try:
        x1, y1, x2, y2 = (int(round(float(value))) for value in lines[2].split())
    except (IndexError, ValueError) as error:
        deleted = "leaves its image out" if option == "crop_to_box" else "leaves its image without a box"
        raise ValueError(f"{path}: expected three lines (viewpoint, box count, 'x1 y1 x2 y2'), got {lines!r}; fix or "
                         f"delete the label file (a deleted one {deleted}), or set data.{option}=false") from error
    return x1, y1, x2, y2


def mat_strings(cells: np.ndarray) -> list[str]:
    """A MATLAB cell array of strings as loaded by scipy (object array of char arrays); empty cells give ""."""
    names = []
    for cell in np.asarray(cells, dtype=object).flatten():
        value = np.asarray(cell).flatten()
        names.append(str(value[0]).strip() if value.size else "")
    return names


def read_make_model_names(path: str) -> tuple[list[str], list[str]]:
    """``make_names`` and ``model_names`` of misc/make_model_name.mat (index = id - 1)."""
    try:
        content = scipy.io.loadmat(path)
    except Exception as error:  # a damaged or non-MATLAB file: scipy raises several kinds
        raise ValueError(f"{path} is not a readable MATLAB file ({error}); unpack misc/ from data.zip again") from error
    missing = [key for key in ("make_names", "model_names") if key not in content]
    if missing:
        raise ValueError(f"{path} has no {' or '.join(missing)}; it must be the official misc/make_model_name.mat")
    return mat_strings(content["make_names"]), mat_strings(content["model_names"])


def name_of(names: list[str], item_id: int, kind: str) -> str:
    """The name of a make or model id, or "<kind> <id>" where the file leaves it empty."""
    name = names[item_id - 1] if 0 < item_id <= len(names) else ""
    return name or f"{kind} {item_id}"


def first_difference(saved_ids: list[int], data_ids: list[int]) -> str:
    for label, (saved, current) in enumerate(zip(saved_ids, data_ids)):
        if saved != current:
            return f"first difference at label {label}: id {saved} in the checkpoint, {current} here"
    return f"the first {min(len(saved_ids), len(data_ids))} agree"


class CompCarsDataModule(ClassificationDataModule):
    """CompCars (web-nature) with the official classification split; ``classify`` is "model" or "make".

    (The option is not called ``task``: that name is the base class's multiclass/multilabel, which ``abn-train``
    hands to the model.)

    ``car_boxes=True`` hands over each car's labelled box with its image (``supervision = "boxes"``);
    ``supervised_fraction`` keeps the boxes of that share of the training images only (seeded by ``seed``).
    """

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(
        self,
        root: str = "data/compcars",
        classify: str = "model",
        crop_to_box: bool = False,
        car_boxes: bool = False,
        supervised_fraction: float = 1.0,
        image_size: Sequence[int] = (224, 323),
        keep_aspect: bool = True,
        hflip: bool = True,
        val_size: int = 0,
        seed: int = 0,
        strict: bool = False,
        num_classes: Optional[int] = None,
        in_chans: int = 3,
        batch_size: int = 32,
        num_workers: int = 8,
        pin_memory: bool = True,
    ):
        super().__init__(num_classes, in_chans, batch_size, num_workers, pin_memory)
        if classify not in CLASSIFY_CHOICES:
            raise ValueError(f"classify must be 'model' or 'make' (car model or make classification), got {classify!r}")
        if in_chans != 3:
            raise ValueError(f"CompCars images are RGB: in_chans must be 3, got {in_chans}")
        if len(image_size) != 2 or any(int(side) < 1 for side in image_size):
            raise ValueError(f"image_size must be [height, width] with positive sides, got {list(image_size)}")
        if val_size < 0:
            raise ValueError(f"val_size must be ≥ 0, got {val_size}")
        check_box_options(crop_to_box, car_boxes, supervised_fraction)
        self.root = os.path.expanduser(str(root))
        self.classify, self.crop_to_box = classify, crop_to_box
        self.car_boxes, self.supervised_fraction = car_boxes, check_supervised_fraction(supervised_fraction)
        self.supervision: Optional[str] = "boxes" if car_boxes else None
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.keep_aspect, self.hflip = keep_aspect, hflip
        self.val_size, self.seed, self.strict = val_size, seed, strict
        self.label_to_id: list[int] = []

    # --- files -------------------------------------------------------------------------------------------------

    def split_file(self, split: str) -> str:
        return os.path.join(self.root, SPLIT_FOLDER, f"{split}.txt")

    def missing_data_message(self, missing: list[str]) -> str:
        return (
            f"CompCars was not found: {', '.join(missing)} missing. The data is released on request, with a "
            f"license agreement, at {HOMEPAGE}. Unpack the web-nature data (data.zip, a split zip archive: join its "
            f"parts, then unzip) so that {self.root}/image, /label, /misc and /train_test_split exist, or point "
            "data.root at the folder that holds them."
        )

    def prepare_data(self) -> None:
        """Check that the folders and files the split needs are there; never downloads."""
        if not os.path.isdir(self.root):
            raise FileNotFoundError(self.missing_data_message([self.root]))
        reads_labels = self.crop_to_box or self.car_boxes
        folders = [os.path.join(self.root, "image")] + ([os.path.join(self.root, "label")] if reads_labels else [])
        files = [self.split_file("train"), self.split_file("test"), os.path.join(self.root, NAMES_FILE)]
        missing = [path for path in folders if not os.path.isdir(path)]
        missing += [path for path in files if not os.path.isfile(path)]
        if missing:
            raise FileNotFoundError(self.missing_data_message(missing))

    def _item_id(self, make_id: int, model_id: int) -> int:
        return model_id if self.classify == "model" else make_id

    def _read_splits(self) -> dict[str, list[Entry]]:
        """Both split files; every test id must be one the training split has (else it has no output)."""
        splits = {split: read_split_file(self.split_file(split)) for split in ("train", "test")}
        known = {self._item_id(make, model) for _, make, model in splits["train"]}
        unknown = [(path, self._item_id(make, model)) for path, make, model in splits["test"]
                   if self._item_id(make, model) not in known]
        if unknown:
            ids = sorted({item for _, item in unknown})
            shown_ids = ", ".join(map(str, ids[:10])) + (", …" if len(ids) > 10 else "")
            raise ValueError(
                f"{len(unknown)} test image(s) in {self.split_file('test')} are of car {self.classify} id(s) that "
                f"{self.split_file('train')} does not have ({shown_ids}; first: {unknown[0][0]}): the model has no "
                "output for them. Use the official split files, or add training images of those ids"
            )
        return splits

    def discover_classes(self) -> list[str]:
        """Labels and class names from the split files and misc/make_model_name.mat only (no image is opened)."""
        self.prepare_data()
        self._adopt_classes(self._read_splits())
        return self.classes

    def _adopt_classes(self, splits: dict[str, list[Entry]]) -> None:
        """``label_to_id``: the training split's ids in order; class names "<make> <model>" or "<make>"."""
        make_names, model_names = read_make_model_names(os.path.join(self.root, NAMES_FILE))
        make_of: dict[int, int] = {}
        for _, make, model in splits["train"]:
            make_of.setdefault(self._item_id(make, model), make)
        self.label_to_id = sorted(make_of)
        names = []
        for item_id in self.label_to_id:
            make_name = name_of(make_names, make_of[item_id], "make")
            if self.classify == "make":
                names.append(make_name)
            else:
                model_name = name_of(model_names, item_id, "model")
                named_with_make = f"{model_name} ".startswith(f"{make_name} ")
                names.append(model_name if named_with_make else f"{make_name} {model_name}")
        self.set_discovered_classes(names)

    def _present(self, split: str, entries: list[Entry]) -> list[Entry]:
        """The listed images whose files (image, and label with ``crop_to_box``) exist; one warning for the rest."""
        kept, missing = [], []
        for entry in entries:
            needed = [self._image_path(entry[0])] + ([self._label_path(entry[0])] if self.crop_to_box else [])
            absent = [path for path in needed if not os.path.isfile(path)]
            (missing if absent else kept).append((entry, absent))
        if missing:
            shown = ", ".join(absent[0] for _, absent in missing[:SHOWN_PATHS])
            what = "image or label file" if self.crop_to_box else "image file"
            message = (f"{len(missing)} of {len(entries)} {split} images listed in {self.split_file(split)} have no "
                       f"{what} (first: {shown}{', …' if len(missing) > SHOWN_PATHS else ''})")
            if not kept:
                raise FileNotFoundError(f"{message}: the {split} split has no images left; check data.root and that "
                                        "data.zip was unpacked completely")
            warnings.warn(f"{message}; they are left out", stacklevel=3)
        return [entry for entry, _ in kept]

    def _read_boxes(self, split: str, entries: list[Entry]) -> Optional[list[Optional[Box]]]:
        """Each image's labelled box where ``crop_to_box`` or ``car_boxes`` needs them (None otherwise). Under
        ``car_boxes`` an image without a label file keeps a None box (NaN in its batch), with one warning."""
        if not (self.crop_to_box or self.car_boxes):
            return None
        option = "crop_to_box" if self.crop_to_box else "car_boxes"
        boxes: list[Optional[Box]] = []
        unlabelled = []
        for relative, _, _ in entries:
            path = self._label_path(relative)
            if os.path.isfile(path):
                boxes.append(read_label_box(path, option))
            else:  # only under car_boxes: crop_to_box has left such images out
                boxes.append(None)
                unlabelled.append(path)
        if unlabelled:
            shown = ", ".join(unlabelled[:SHOWN_PATHS]) + (", …" if len(unlabelled) > SHOWN_PATHS else "")
            warnings.warn(f"{len(unlabelled)} of {len(entries)} {split} images listed in {self.split_file(split)} "
                          f"have no label file (first: {shown}); they come without a box (NaN) and train without "
                          "attention supervision", stacklevel=3)
        return boxes

    def _image_path(self, relative: str) -> str:
        return os.path.join(self.root, "image", *relative.split("/"))

    def _label_path(self, relative: str) -> str:
        return os.path.splitext(os.path.join(self.root, "label", *relative.split("/")))[0] + ".txt"

    # --- datasets ----------------------------------------------------------------------------------------------

    def _transform(self, train: bool) -> v2.Compose:
        """Flip (training), letterbox or resize, normalise: a PIL image, or a PIL image and its ``BoundingBoxes``,
        which every geometric step moves with the image."""
        height, width = self.image_size
        steps: list[Callable] = [v2.RandomHorizontalFlip()] if train and self.augment and self.hflip else []
        steps.append(Letterbox(height, width) if self.keep_aspect else v2.Resize((height, width)))
        to_normalised_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std),
                                v2.ToPureTensor()]
        return v2.Compose(steps + to_normalised_tensor)

    def _dataset(self, entries: list[Entry], boxes: Optional[list[Optional[Box]]], train: bool) -> ImageFiles:
        label_of = {item_id: label for label, item_id in enumerate(self.label_to_id)}
        paths = [self._image_path(path) for path, _, _ in entries]
        targets = [label_of[self._item_id(make, model)] for _, make, model in entries]
        if self.crop_to_box:
            return CarBoxImages(paths, targets, boxes, self._transform(train), self.strict)
        if self.car_boxes:
            return ImagesWithCarBoxes(paths, targets, boxes, self._transform(train), self.strict)
        return ImageFiles(paths, targets, self._transform(train), strict=self.strict)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()
        splits = self._read_splits()
        self._adopt_classes(splits)
        train_entries, test_entries = self._present("train", splits["train"]), self._present("test", splits["test"])
        train_boxes, test_boxes = self._read_boxes("train", train_entries), self._read_boxes("test", test_entries)
        train = self._dataset(train_entries, train_boxes, train=True)
        test = self._dataset(test_entries, test_boxes, train=False)
        self.assign_splits(train, lambda: self._dataset(train_entries, train_boxes, train=False), test, self.val_size,
                           self.seed, self.root)

    # --- checkpoints -------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Also saves which car model (or make) id each output is, and which of the two is classified."""
        return {**super().state_dict(), "label_to_id": list(self.label_to_id), "classify": self.classify}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_classify, saved_ids = state.get("classify"), list(state.get("label_to_id") or [])
        if saved_classify and saved_classify != self.classify:
            raise ValueError(f"the checkpoint classifies car {saved_classify}s, this data car {self.classify}s; "
                             f"resume with data.classify={saved_classify}")
        if saved_ids and not self.label_to_id:
            self.discover_classes()
        if saved_ids and saved_ids != self.label_to_id:
            raise ValueError(
                f"the checkpoint's {len(saved_ids)} outputs are other car {self.classify} ids than this data's "
                f"{len(self.label_to_id)} ({first_difference(saved_ids, self.label_to_id)}); the split files differ. "
                "Resume with the split (train_test_split/classification/train.txt) the checkpoint was trained on"
            )
        super().load_state_dict(state)
