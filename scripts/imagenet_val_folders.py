"""Sort the ILSVRC-2012 validation images into class folders ``<out>/<wnid>/``, as ImageNetDataModule reads them.

    python scripts/imagenet_val_folders.py --val ILSVRC2012_img_val.tar --devkit ILSVRC2012_devkit_t12.tar.gz \
        --out data/imagenet/val

``--val`` is the official archive (read member by member, nothing is unpacked elsewhere) or a folder holding the
50,000 unpacked images (they are copied, or moved with ``--move``). The labels come from the devkit (archive or
unpacked folder: ``data/meta.mat`` maps ILSVRC2012_ID to wnid, ``data/ILSVRC2012_validation_ground_truth.txt`` gives
the ID of each image in file-name order), or from ``--labels``: Kaggle's ``LOC_val_solution.csv`` or any text file of
``<image name> <wnid>`` lines. The archive and the source images are never deleted (``--move`` aside); images already
in place are skipped, so an interrupted run can simply be started again.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Iterator, Optional

import scipy.io

GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
META = "data/meta.mat"
WNID = re.compile(r"^n\d{8}$")


def _devkit_file(devkit: Path, relative: str) -> bytes:
    """A file of the devkit, from the .tar.gz or from the unpacked folder (with or without its top folder)."""
    if devkit.is_dir():
        for candidate in (devkit / relative, devkit / "ILSVRC2012_devkit_t12" / relative):
            if candidate.is_file():
                return candidate.read_bytes()
        raise FileNotFoundError(f"{devkit} has no {relative}: give the devkit archive or its unpacked folder")
    with tarfile.open(devkit) as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.endswith(relative):
                return archive.extractfile(member).read()
    raise FileNotFoundError(f"{devkit} has no {relative}: is it ILSVRC2012_devkit_t12.tar.gz?")


def labels_from_devkit(devkit: Path, image_names: list[str]) -> dict[str, str]:
    """image name → wnid; the ground-truth file lists the class ID of each image in sorted file-name order."""
    synsets = scipy.io.loadmat(io.BytesIO(_devkit_file(devkit, META)), squeeze_me=True)["synsets"]
    id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    ids = [int(line) for line in _devkit_file(devkit, GROUND_TRUTH).decode().split()]
    names = sorted(image_names)
    if len(ids) != len(names):
        raise ValueError(f"the devkit lists {len(ids)} validation images but {len(names)} were found; give the "
                         "complete validation archive (50,000 images)")
    return {name: id_to_wnid[class_id] for name, class_id in zip(names, ids)}


def labels_from_file(path: Path) -> dict[str, str]:
    """``<name>,<wnid> …`` (Kaggle's LOC_val_solution.csv) or ``<name> <wnid>`` lines; names with or without .JPEG."""
    labels = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.replace(",", " ").split()
        if not fields or fields[0] == "ImageId":
            continue
        if len(fields) < 2 or not WNID.match(fields[1]):
            raise ValueError(f"{path}, line {number}: expected '<image name> <wnid>', got {line!r}")
        labels[Path(fields[0]).stem] = fields[1]
    return labels


def validation_images(val: Path) -> Iterator[tuple[str, callable]]:
    """(file name, reader of its bytes) for each JPEG of the archive or folder."""
    if val.is_dir():
        for path in sorted(val.iterdir()):
            if path.is_file() and path.suffix.lower() == ".jpeg":
                yield path.name, path
        return
    with tarfile.open(val) as archive:
        for member in archive:
            if member.isfile() and member.name.lower().endswith(".jpeg"):
                yield os.path.basename(member.name), archive.extractfile(member)


def image_names(val: Path) -> list[str]:
    if val.is_dir():
        return sorted(p.name for p in val.iterdir() if p.is_file() and p.suffix.lower() == ".jpeg")
    with tarfile.open(val) as archive:
        return sorted(os.path.basename(m.name) for m in archive if m.isfile() and m.name.lower().endswith(".jpeg"))


def sort_into_folders(val: Path, out: Path, labels: dict[str, str], move: bool = False) -> tuple[int, int]:
    """Write each image to ``out/<wnid>/<name>``; returns (written, already there)."""
    written = skipped = 0
    for name, source in validation_images(val):
        wnid = labels.get(name) or labels.get(Path(name).stem)
        if wnid is None:
            raise ValueError(f"no label for {name}; the labels do not belong to these images")
        target = out / wnid / name
        if target.is_file():
            skipped += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        if isinstance(source, Path):
            if move:
                shutil.move(source, partial)
            else:
                shutil.copyfile(source, partial)
        else:
            with open(partial, "wb") as handle:
                shutil.copyfileobj(source, handle)
        partial.replace(target)  # a crash leaves a .part file, never a truncated image under the final name
        written += 1
    return written, skipped


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--val", type=Path, required=True, help="ILSVRC2012_img_val.tar or a folder of its images")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--devkit", type=Path, help="ILSVRC2012_devkit_t12.tar.gz or its unpacked folder")
    source.add_argument("--labels", type=Path, help="LOC_val_solution.csv or '<image name> <wnid>' lines")
    parser.add_argument("--out", type=Path, required=True, help="the val folder to fill, e.g. data/imagenet/val")
    parser.add_argument("--move", action="store_true", help="move images out of a --val folder instead of copying")
    args = parser.parse_args(argv)

    for path in (args.val, args.devkit or args.labels):
        if not path.exists():
            parser.error(f"{path} does not exist")
    if args.move and not args.val.is_dir():
        parser.error("--move needs --val to be a folder of images (an archive is read, never changed)")
    names = image_names(args.val)
    if not names:
        parser.error(f"{args.val} holds no .JPEG images")
    labels = labels_from_devkit(args.devkit, names) if args.devkit else labels_from_file(args.labels)
    written, skipped = sort_into_folders(args.val, args.out, labels, args.move)
    classes = len(set(labels[n] if n in labels else labels[Path(n).stem] for n in names))
    print(f"{written} images written, {skipped} already in place, {classes} class folders in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
