"""CelebA (aligned and cropped faces) with its 40 binary attributes, read from the official text files.

Layout, as torchvision's ``datasets.CelebA`` expects it::

    <root>/celeba/img_align_celeba/000001.jpg …    (178×218 JPEGs)
    <root>/celeba/list_attr_celeba.txt              (image count; 40 names; "000001.jpg -1  1 …" rows)
    <root>/celeba/list_eval_partition.txt           ("000001.jpg 0": 0 train, 1 valid, 2 test)

Only these two text files are read (torchvision's class would also need the identity, box and landmark files,
and checks MD5 sums). ``attribute=None`` learns all 40 attributes at once (``task="multilabel"``, targets are
float 0/1 vectors), as in the ABN paper; ``attribute="Smiling"`` learns that one as two classes
``["not Smiling", "Smiling"]``. Preprocessing follows the paper's ImageNet-pretrained ResNet-101: resize to
``image_size``×``image_size``, horizontal flip in training, ImageNet mean and std.
"""

from __future__ import annotations

import difflib
import os
import warnings
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision import transforms

from .base import IMAGENET_MEAN, IMAGENET_STD, ClassificationDataModule, check_not_empty
from .images import ImageFiles


ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)
ATTRIBUTE_COUNT = len(ATTRIBUTE_NAMES)
FOLDER = "celeba"
IMAGE_FOLDER = "img_align_celeba"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
PARTITION_CODES = {"train": 0, "val": 1, "test": 2}  # the official "valid" partition is our validation split
HOW_TO_GET_CELEBA = (
    "Get CelebA from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html: img_align_celeba.zip (folder Img), "
    "list_attr_celeba.txt (folder Anno) and list_eval_partition.txt (folder Eval); unpack them so that "
    "<root>/celeba/img_align_celeba/ and the two text files exist (data.root is the folder that holds celeba/)."
)


class CelebAAttributes:
    """The parsed ``list_attr_celeba.txt``: attribute ``names``, and ``positive`` (N×40 bool) per image ``rows``."""

    def __init__(self, names: list[str], rows: dict[str, int], positive: Tensor):
        self.names, self.rows, self.positive = names, rows, positive


def read_attribute_names(path: str) -> list[str]:
    """The 40 names on line 2, without reading the (202,599) rows below them."""
    with open(path, encoding="utf-8") as handle:
        _read_image_count(handle.readline(), path)
        return _parse_names(handle.readline(), path)


def read_attributes(path: str) -> CelebAAttributes:
    """Parse and check the whole attribute file: 40 values per row, each -1 or 1, one row per image."""
    with open(path, encoding="utf-8") as handle:
        count = _read_image_count(handle.readline(), path)
        names = _parse_names(handle.readline(), path)
        rows: dict[str, int] = {}
        signs: list[str] = []
        for line_number, line in enumerate(handle, start=3):
            fields = line.split()
            if not fields:
                continue
            name, values = fields[0], fields[1:]
            if len(values) != ATTRIBUTE_COUNT:
                raise ValueError(f"{path}, line {line_number}: expected a file name and {ATTRIBUTE_COUNT} values, "
                                 f"found {len(values)} values; the file is damaged, download it again")
            if not set(values) <= {"-1", "1"}:
                wrong = sorted(set(values) - {"-1", "1"})
                raise ValueError(f"{path}, line {line_number}: attribute values must be -1 or 1, found {wrong}")
            if name in rows:
                raise ValueError(f"{path}, line {line_number}: {name} is listed twice")
            rows[name] = len(rows)
            signs.append("".join("1" if value == "1" else "0" for value in values))
    if count != len(rows):
        raise ValueError(f"{path}: line 1 announces {count} images but the file lists {len(rows)}; the file looks "
                         "truncated or edited, download it again")
    bits = np.frombuffer("".join(signs).encode("ascii"), dtype=np.uint8).reshape(len(rows), ATTRIBUTE_COUNT)
    return CelebAAttributes(names, rows, torch.from_numpy(bits == ord("1")))


def _read_image_count(line: str, path: str) -> int:
    try:
        return int(line.strip())
    except ValueError:
        raise ValueError(f"{path}, line 1: expected the image count (e.g. 202599), found {line.strip()[:60]!r}; "
                         f"is this CelebA's {ATTRIBUTE_FILE}?") from None


def _parse_names(line: str, path: str) -> list[str]:
    names = line.split()
    if len(names) != ATTRIBUTE_COUNT:
        raise ValueError(f"{path}, line 2: expected the {ATTRIBUTE_COUNT} attribute names, found {len(names)}; "
                         f"is this CelebA's {ATTRIBUTE_FILE}?")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}, line 2: an attribute name appears twice")
    return names


def read_partition(path: str) -> list[tuple[str, int]]:
    """``(file name, partition code)`` pairs in file order; codes 0 train, 1 valid, 2 test."""
    pairs: list[tuple[str, int]] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise ValueError(f"{path}, line {line_number}: expected '<image> <0|1|2>', found {line.strip()[:80]!r}")
            if fields[0] in seen:
                raise ValueError(f"{path}, line {line_number}: {fields[0]} is listed twice")
            seen.add(fields[0])
            pairs.append((fields[0], int(fields[1])))
    return pairs


class CelebADataModule(ClassificationDataModule):
    """CelebA's official partitions: train (162,770), valid (19,867, our validation split) and test (19,962)."""

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(
        self,
        root: str = "data",
        attribute: Optional[str] = None,
        num_classes: Optional[int] = None,
        in_chans: int = 3,
        image_size: int = 224,
        hflip: bool = True,
        use_official_val: bool = True,
        strict: bool = False,
        batch_size: int = 8,
        num_workers: int = 4,
        pin_memory: bool = True,
    ):
        super().__init__(num_classes, in_chans, batch_size, num_workers, pin_memory)
        self.attribute = None if attribute is None else str(attribute)
        expected = ATTRIBUTE_COUNT if self.attribute is None else 2
        if num_classes is not None and num_classes != expected:
            learns = f"all {ATTRIBUTE_COUNT} attributes" if self.attribute is None else f"attribute={self.attribute} (absent / present)"
            raise ValueError(f"CelebA with {learns} has {expected} outputs but data.num_classes={num_classes}; set "
                             f"data.num_classes=null (the data module sets it) or {expected}")
        if in_chans != 3:
            raise ValueError(f"CelebA images are RGB: in_chans must be 3, got {in_chans}")
        if image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        self.task = "multilabel" if self.attribute is None else "multiclass"
        self.folder = os.path.join(str(root), FOLDER)
        self.image_size, self.hflip, self.use_official_val, self.strict = image_size, hflip, use_official_val, strict

    @property
    def attribute_file(self) -> str:
        return os.path.join(self.folder, ATTRIBUTE_FILE)

    @property
    def partition_file(self) -> str:
        return os.path.join(self.folder, PARTITION_FILE)

    @property
    def image_folder(self) -> str:
        return os.path.join(self.folder, IMAGE_FOLDER)

    def check_files(self, *needed: str) -> None:
        """Raise one FileNotFoundError naming every missing file or folder, with where to get CelebA."""
        missing = [path for path in needed if not os.path.exists(path)]
        if missing:
            raise FileNotFoundError(f"CelebA is incomplete: {', '.join(missing)} not found. {HOW_TO_GET_CELEBA}")

    def prepare_data(self) -> None:
        self.check_files(self.image_folder, self.attribute_file, self.partition_file)

    def classes_for(self, names: Sequence[str]) -> list[str]:
        """All attribute names (multi-task), or ``["not <Attr>", "<Attr>"]`` for the chosen one."""
        if self.attribute is None:
            return list(names)
        if self.attribute not in names:
            close = difflib.get_close_matches(self.attribute, names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"data.attribute={self.attribute} is not a CelebA attribute{hint}; choose one of: "
                             f"{', '.join(names)}; or null for all {len(names)} attributes")
        return [f"not {self.attribute}", self.attribute]

    def discover_classes(self) -> list[str]:
        """Only the attribute file's first two lines are read: cheap enough to call before building the model."""
        self.check_files(self.attribute_file)
        self.set_discovered_classes(self.classes_for(read_attribute_names(self.attribute_file)))
        return self.classes

    def _transform(self, train: bool) -> transforms.Compose:
        steps = [transforms.Resize((self.image_size, self.image_size))]
        if train and self.augment and self.hflip:
            steps.append(transforms.RandomHorizontalFlip())
        return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])

    def _targets(self, attributes: CelebAAttributes, rows: list[int]) -> list:
        positive = attributes.positive[rows]
        if self.attribute is None:
            return list(positive.float())
        return positive[:, attributes.names.index(self.attribute)].long().tolist()

    def find_images(self, pairs: list[tuple[str, int]], attributes: CelebAAttributes) -> dict[int, list[tuple]]:
        """``partition code → [(path, attribute row)]`` of the listed images found on disk; one warning about the
        others. Every listed image needs attributes; attribute rows of unlisted images are not used."""
        unlabelled = [name for name, _ in pairs if name not in attributes.rows]
        if unlabelled:
            raise ValueError(f"{len(unlabelled)} image(s) of {self.partition_file} have no row in "
                             f"{self.attribute_file} (first: {', '.join(unlabelled[:3])}); use both files of the same "
                             "CelebA download")
        on_disk = set(os.listdir(self.image_folder))
        found: dict[int, list[tuple[str, int]]] = {code: [] for code in PARTITION_CODES.values()}
        missing = []
        for name, code in pairs:
            png = os.path.splitext(name)[0] + ".png"  # the official page also offers the aligned faces as PNGs
            stored = name if name in on_disk else png if png in on_disk else None
            if stored is None:
                missing.append(os.path.join(self.image_folder, name))
            else:
                found[code].append((os.path.join(self.image_folder, stored), attributes.rows[name]))
        if missing:
            warnings.warn(f"{len(missing)} image(s) listed in {self.partition_file} are missing from "
                          f"{self.image_folder} and were left out (first: {', '.join(missing[:3])}); unpack "
                          "img_align_celeba.zip completely to use them", stacklevel=2)
        return found

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()
        attributes = read_attributes(self.attribute_file)
        self.set_discovered_classes(self.classes_for(attributes.names))
        found = self.find_images(read_partition(self.partition_file), attributes)

        def split(name: str, train: bool) -> ImageFiles:
            listed = found[PARTITION_CODES[name]]
            paths, rows = [path for path, _ in listed], [row for _, row in listed]
            return ImageFiles(paths, self._targets(attributes, rows), self._transform(train), strict=self.strict)

        self.train_set, self.test_set = split("train", train=True), split("test", train=False)
        self.val_set = split("val", train=False) if self.use_official_val else self.test_set
        where = f"{self.partition_file}, images in {self.image_folder}"
        for name in ("train", "val", "test"):
            check_not_empty(name, getattr(self, f"{name}_set"), where)

    def train_label_frequencies(self) -> Tensor:
        """The share of training images (those found on disk) with each of the 40 attributes, for the frequency
        weights of ``ABNModule(attribute_weights="frequency")``; only when all attributes are learnt at once."""
        if self.attribute is not None:
            raise ValueError(f"label frequencies are per attribute of the multi-label task; data.attribute="
                             f"{self.attribute} learns one attribute as two classes: set data.attribute=null")
        self.setup("fit")
        return torch.stack(self.train_set.targets).mean(dim=0)
