"""Stand-in data sets for tests and benchmarks: fakes (random or patterned pixels) in each data set's real on-disk
format, tiny or of the real size, written where the data modules read them. Production code never imports this
module; ``tests/`` and ``scripts/`` do.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import scipy.io
from PIL import Image

from .celeba import ATTRIBUTE_COUNT, ATTRIBUTE_FILE, ATTRIBUTE_NAMES, FOLDER, IMAGE_FOLDER, PARTITION_FILE
from .cifar import CIFAR10_CLASSES, CIFAR100_CLASSES
from .compcars import NAMES_FILE, SPLIT_FOLDER
from .fashion_mnist import FASHION_MNIST_CLASSES, raw_folder
from .svhn import SVHN_CLASSES

SVHN_SIZES = {"train": 73257, "test": 26032}  # the real train and test splits (extra: 531,131)


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write an IDX file (the MNIST format: magic, dimensions, then unsigned bytes); with ``compress``, gzipped as
    ``<path>.gz``."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def write_standin_fashion_mnist(root: Path, train: int = 60000, test: int = 10000) -> None:
    """The four IDX files (random 28×28 images), uncompressed, where torchvision reads them."""
    rng = np.random.default_rng(0)
    folder = raw_folder(root)
    folder.mkdir(parents=True)
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (count, 28, 28))
        labels = rng.integers(0, FASHION_MNIST_CLASSES, count)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress=False)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress=False)


def write_standin_cifar(root: Path, hundred: bool, train_per_file: Optional[int] = None, test: int = 10000) -> None:
    """cifar-10-batches-py (5 training files) or cifar-100-python (1) of random images, pickled as the originals;
    ``train_per_file`` None: the real 10k (CIFAR-10) or 50k (CIFAR-100) images per training file."""
    rng = np.random.default_rng(0)
    if hundred:
        classes, key, folder = CIFAR100_CLASSES, "fine_labels", root / "cifar-100-python"
        files = {"train": train_per_file or 50000, "test": test}
        meta_name, meta = "meta", {"fine_label_names": [f"class{i}" for i in range(classes)]}
    else:
        classes, key, folder = CIFAR10_CLASSES, "labels", root / "cifar-10-batches-py"
        files = {**{f"data_batch_{i}": train_per_file or 10000 for i in range(1, 6)}, "test_batch": test}
        meta_name, meta = "batches.meta", {"label_names": [f"class{i}" for i in range(classes)]}
    folder.mkdir(parents=True)
    for name, count in files.items():
        images = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        batch = {"data": images, key: rng.integers(0, classes, count).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / meta_name).write_bytes(pickle.dumps(meta))


def write_standin_svhn(root: Path, sizes: Optional[dict[str, int]] = None, seed: int = 0) -> None:
    """svhn/<split>_32x32.mat of random images for each split in ``sizes`` (default: the real train and test): X is
    H×W×3×N, y holds 1–10 (SVHN stores the digit 0 as 10)."""
    rng = np.random.default_rng(seed)
    (root / "svhn").mkdir(parents=True, exist_ok=True)
    for split, count in (sizes or SVHN_SIZES).items():
        images = rng.integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
        labels = rng.integers(1, SVHN_CLASSES + 1, (count, 1))
        scipy.io.savemat(root / "svhn" / f"{split}_32x32.mat", {"X": images, "y": labels})


def write_standin_imagenet(root: Path, classes: int = 10, per_class: int = 40) -> None:
    """Class folders of 500×375 JPEGs (a typical ImageNet size), smooth noise so they compress like photos."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k in range(classes):
            folder = root / "imagenet" / split / f"n{k:08d}"
            folder.mkdir(parents=True)
            for i in range(per_class if split == "train" else 2):
                small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
                Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(folder / f"{i}.JPEG", quality=90)


def write_standin_celeba(
    root: str | os.PathLike,
    num_images: int = 12,
    partitions: Optional[Sequence[int]] = None,
    image_size: tuple[int, int] = (178, 218),
    seed: int = 0,
) -> Path:
    """Write a tiny CelebA in the real on-disk format under ``<root>/celeba`` and return that folder.

    ``partitions`` gives each image's code (0 train, 1 valid, 2 test); by default half train, a quarter each valid
    and test. ``image_size`` is (width, height), 178×218 as the aligned faces. Attribute values are random
    (seeded). An existing CelebA is never overwritten.
    """
    folder = Path(root) / FOLDER
    images = folder / IMAGE_FOLDER
    for path in (folder / ATTRIBUTE_FILE, folder / PARTITION_FILE, images):
        if path.exists():
            raise FileExistsError(f"{path} exists; write the stand-in CelebA under another root")
    if partitions is None:
        held_out = max(1, num_images // 4)
        partitions = [0] * (num_images - 2 * held_out) + [1] * held_out + [2] * held_out
    if len(partitions) != num_images or not set(partitions) <= {0, 1, 2}:
        raise ValueError(f"partitions must give 0, 1 or 2 for each of the {num_images} images")
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1, 1], size=(num_images, ATTRIBUTE_COUNT))
    names = [f"{i:06d}.jpg" for i in range(1, num_images + 1)]
    images.mkdir(parents=True)
    width, height = image_size
    for name in names:
        coarse = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(images / name, format="JPEG", quality=90)
    rows = [f"{name} " + " ".join(f"{value:2d}" for value in row) for name, row in zip(names, signs)]
    (folder / ATTRIBUTE_FILE).write_text(f"{num_images}\n" + " ".join(ATTRIBUTE_NAMES) + " \n" + "\n".join(rows) + "\n")
    (folder / PARTITION_FILE).write_text("".join(f"{name} {code}\n" for name, code in zip(names, partitions)))
    return folder


def write_standin_compcars(
    root: str | Path,
    cars: Sequence[tuple[int, int]] = ((1, 3), (1, 7), (2, 12)),
    train_per_model: int = 4,
    test_per_model: int = 2,
    image_size: tuple[int, int] = (48, 64),
    seed: int = 0,
    unnamed_models: Sequence[int] = (),
) -> dict[str, list[str]]:
    """Write a tiny CompCars in the real on-disk layout (image/, label/, misc/make_model_name.mat, split files), for
    tests and benchmarks without the real data.

    ``cars`` are (make_id, model_id) pairs; make and model names are "Make<id>" and "Model<id>" in a .mat of the
    real size (163 makes, 2004 models), ``unnamed_models`` left empty as some are in the real file. Each
    ``image_size`` (height, width) JPEG is blue with its car box (at least half of each side) filled red, so a crop
    to the box is all red. Returns the relative paths (as in the split files) of each split.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = image_size
    listed: dict[str, list[str]] = {"train": [], "test": []}
    for make_id, model_id in cars:
        for index in range(train_per_model + test_per_model):
            split = "train" if index < train_per_model else "test"
            relative = f"{make_id}/{model_id}/{2010 + index % 3}/{rng.bytes(7).hex()}.jpg"
            x1, y1 = (int(rng.integers(1, side // 4 + 1)) for side in (width, height))
            x2, y2 = (int(rng.integers(side // 2 + 1, side + 1)) for side in (width, height))
            pixels = np.empty((height, width, 3), dtype=np.uint8)
            pixels[:] = (20, 60, 220)
            pixels[y1 - 1 : y2, x1 - 1 : x2] = (230, 30, 30)
            image_path = root / "image" / relative
            image_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(image_path, quality=95)
            label_path = (root / "label" / relative).with_suffix(".txt")
            label_path.parent.mkdir(parents=True, exist_ok=True)
            label_path.write_text(f"{rng.choice([-1, 1, 2, 3, 4, 5])}\n1\n{x1} {y1} {x2} {y2}\n")
            listed[split].append(relative)
    split_folder = root / SPLIT_FOLDER
    split_folder.mkdir(parents=True, exist_ok=True)
    for split, paths in listed.items():
        (split_folder / f"{split}.txt").write_text("".join(f"{path}\n" for path in paths))
    (root / "misc").mkdir(parents=True, exist_ok=True)
    make_names = np.empty((163, 1), dtype=object)
    make_names[:, 0] = [f"Make{i}" for i in range(1, 164)]
    model_names = np.empty((2004, 1), dtype=object)
    model_names[:, 0] = ["" if i in unnamed_models else f"Model{i}" for i in range(1, 2005)]
    scipy.io.savemat(root / NAMES_FILE, {"make_names": make_names, "model_names": model_names})
    return listed
