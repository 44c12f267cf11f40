"""Export the attention maps of an ABN checkpoint as editable greyscale PNGs, for fine-tuning on edited maps.

    python scripts/export_maps.py logs/train/runs/<date>/checkpoints/last.ckpt --out logs/hitl
    python scripts/export_maps.py <ckpt> --out logs/hitl --split val --num-images 32
    python scripts/export_maps.py <ckpt> data.seed=1 --out logs/hitl --indices 0 5 7   # data options as abn-explain's

From a ``head=abn`` checkpoint and the data of its training run (``<run>/.hydra/config.yaml``; ``data=<name>`` and
``data.<key>=<value>`` change it as with abn-explain), the chosen images of a split, with the evaluation transform
(no augmentation), become a folder that ``data=folder`` reads with ``data.mask_dir``:

    <out>/images/train/<class>/<name>.png   the image as the model saw it (denormalised, at the input size)
    <out>/maps/train/<class>/<name>.png     the map M resized to the image size, greyscale 0..255: the file to edit
    <out>/side_by_side/<class>/<name>.png   image | map, enlarged, to look at while editing
    <out>/boxes.csv                         name (the path under images/ and maps/), x0, y0, x1, y1 (x1/y1 exclusive)
                                            of the images whose data has a box

The exported images form the training split of the fine-tuning data whichever split they come from. Class folders
are named after the classes; where the folder data's sorting of the names would change their order, each name is
prefixed with its index (``0_circle``), so that output i stays class i. Every class needs an image. Printed at the
end: what was written and the ``abn-train ... init_from=<ckpt>`` command that fine-tunes on the (edited) maps.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image
from torch import Tensor

from abn.checkpoints import EXPLAIN_FIX, load_network, override_value, read_checkpoint, training_data_config
from abn.config import config_dir
from abn.data.facts import adopt_data_facts
from abn.explain.run import check_model_fits_data, resolve_device

FOLDERS = ("images", "maps", "side_by_side")
VIEW_HEIGHT = 128  # side-by-side pictures of small images are enlarged (nearest neighbour) to at least this height
SUPERVISION_HINT = ("model.attention_supervision.loss=l1 model.attention_supervision.weight=1 "
                    "model.freeze_features=true trainer.max_epochs=10")


class Exported(NamedTuple):
    """One exported image: where its files go (``name``: the path under images/ and maps/), the image (C×H×W in
    [0, 1]), its map (H×W in [0, 1]) and its box (or None)."""

    name: str
    image: Tensor
    map: Tensor
    box: Optional[list[float]]


def data_config(ckpt_path: str, overrides: Sequence[str]) -> DictConfig:
    """The ``data`` settings as abn-explain takes them: the checkpoint's training run's, or ``data=<name>``'s, with
    ``data.<key>=<value>`` overrides."""
    wrong = [o for o in overrides if not (o.startswith("data=") or o.startswith("data."))]
    if wrong:
        raise ValueError(f"only data overrides (data=<name>, data.<key>=<value>) are taken, not {', '.join(wrong)}")
    chosen = [o for o in overrides if o.startswith("data=")]
    options = [o for o in overrides if o.startswith("data.")]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            given = [*chosen, *options] if chosen else []  # without data=, the options apply to the run's data below
            cfg = compose(config_name="explain", overrides=[f"ckpt_path={ckpt_path}", *given])
    finally:
        GlobalHydra.instance().clear()
    if not chosen:
        with open_dict(cfg):
            cfg.data = training_data_config(ckpt_path)
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(options))
        except Exception as error:
            raise ValueError(f"cannot apply {' '.join(options)} to the run's data settings: {error}") from error
    return cfg


def split_dataset(datamodule: Any, split: str) -> Any:
    datamodule.augment = False  # the training images as they are: no random crop or flip
    datamodule.setup({"train": "fit", "val": "validate", "test": "test"}[split])
    dataset = getattr(datamodule, f"{split}_set")
    if dataset is None or len(dataset) == 0:
        raise ValueError(f"the {split} split is empty; choose another with --split")
    return dataset


def choose_indices(size: int, num_images: int, indices: Optional[list[int]], seed: int) -> list[int]:
    """``indices`` as given, or ``num_images`` drawn (seeded) from a split of ``size`` images, in order."""
    if indices:
        outside = [i for i in indices if not 0 <= i < size]
        if outside:
            raise ValueError(f"--indices {', '.join(map(str, outside))} are outside the split (0 to {size - 1})")
        return list(dict.fromkeys(indices))
    if num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {num_images}")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:num_images].tolist())


def class_folders(classes: Sequence[str], num_classes: int) -> list[str]:
    """A folder name per class, safe on any file system; prefixed with the class index where sorting the names (as
    the folder data does) would change their order or two names are the same."""
    names = [re.sub(r"[^\w.+-]+", "_", str(name)).strip("._") or "class" for name in classes] \
        if len(classes) == num_classes else [str(index) for index in range(num_classes)]
    if names == sorted(names) and len(set(names)) == len(names):
        return names
    width = len(str(num_classes - 1))
    return [f"{index:0{width}d}_{name}" for index, name in enumerate(names)]


def collect(net: torch.nn.Module, datamodule: Any, dataset: Any, indices: list[int], folders: list[str], split: str,
            device: torch.device, batch_size: int) -> list[Exported]:
    """Run the network on the chosen images (in batches) and keep each image, its map at the image's size and its
    box; unreadable images (the folder data hands them over as None) are left out with a note."""
    exported: list[Exported] = []
    width = max(5, len(str(len(dataset) - 1)))
    for start in range(0, len(indices), batch_size):
        samples = []
        for index in indices[start:start + batch_size]:
            sample = dataset[index]
            if sample is None:
                print(f"image {index} of the {split} split cannot be read; left out")
                continue
            samples.append((index, sample))
        if not samples:
            continue
        images = torch.stack([sample[0] for _, sample in samples]).to(device)
        with torch.no_grad():
            maps = net(images).attention
        maps = F.interpolate(maps.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        shown = datamodule.denormalize(images).cpu()
        for row, (index, sample) in enumerate(samples):
            label = int(sample[1])
            third = sample[2] if len(sample) > 2 else None
            box = [float(v) for v in third.reshape(-1)] if torch.is_tensor(third) and third.numel() == 4 else None
            if box is not None and not all(math.isfinite(v) for v in box):
                box = None
            name = f"train/{folders[label]}/{split}_{index:0{width}d}.png"
            exported.append(Exported(name, shown[row], maps[row, 0].clamp(0, 1).cpu(), box))
    return exported


def to_pil(values: Tensor) -> Image.Image:
    """C×H×W (C = 1 or 3) or H×W in [0, 1] as an 8-bit PIL image (greyscale or RGB)."""
    pixels = (values * 255).round().clamp(0, 255).to(torch.uint8)
    if pixels.dim() == 3 and pixels.shape[0] == 3:
        return Image.fromarray(pixels.permute(1, 2, 0).numpy(), mode="RGB")
    return Image.fromarray(pixels.reshape(pixels.shape[-2:]).numpy(), mode="L")


def side_by_side(image: Image.Image, map_image: Image.Image) -> Image.Image:
    """image | map, enlarged by a whole factor (nearest neighbour) to at least VIEW_HEIGHT pixels high."""
    scale = max(1, math.ceil(VIEW_HEIGHT / image.height))
    size = (image.width * scale, image.height * scale)
    pair = Image.new("RGB", (2 * size[0], size[1]))
    pair.paste(image.convert("RGB").resize(size, Image.NEAREST), (0, 0))
    pair.paste(map_image.convert("RGB").resize(size, Image.NEAREST), (size[0], 0))
    return pair


def earlier_export(out: Path, overwrite: bool) -> list[Path]:
    """The files of an earlier export in ``out``; refused (its maps may hold edits) unless ``overwrite``."""
    earlier = [out / name for name in (*FOLDERS, "boxes.csv") if (out / name).exists()]
    if earlier and not overwrite:
        raise FileExistsError(f"{out} already holds an export ({', '.join(path.name for path in earlier)}); its maps "
                              "may hold your edits. Choose another --out, or add --overwrite to replace it")
    return earlier


def write(out: Path, exported: list[Exported]) -> bool:
    """Write the images, maps, side-by-side pictures and (where any image has a box) boxes.csv; True if it did."""
    for item in exported:
        image, map_image = to_pil(item.image), to_pil(item.map)
        for folder, picture in (("images", image), ("maps", map_image)):
            path = out / folder / item.name
            path.parent.mkdir(parents=True, exist_ok=True)
            picture.save(path)
        view = out / "side_by_side" / Path(item.name).relative_to("train")
        view.parent.mkdir(parents=True, exist_ok=True)
        side_by_side(image, map_image).save(view)
    boxed = [item for item in exported if item.box is not None]
    if boxed:
        with open(out / "boxes.csv", "w", newline="") as handle:
            table = csv.writer(handle)
            table.writerow(["name", "x0", "y0", "x1", "y1"])
            table.writerows([item.name, *(f"{v:g}" for v in item.box)] for item in boxed)
    return bool(boxed)


def number_list(values: Sequence[float]) -> str:
    return "[" + ",".join(f"{float(value):g}" for value in values) + "]"


def fine_tune_command(ckpt_path: str, out: Path, datamodule: Any, hparams: dict[str, Any], size: tuple[int, int],
                      mask_dir: Optional[Path] = None) -> str:
    """The ``abn-train`` command that fine-tunes the checkpoint's network on the exported images and their maps
    (or the edited ones in ``mask_dir``): the same network, input size and normalisation."""
    parts = ["abn-train", "data=folder", f"data.root={out / 'images'}", f"data.mask_dir={mask_dir or out / 'maps'}",
             f"data.image_size={size[0]}", "data.resize_only=true", f"data.in_chans={datamodule.in_chans}",
             f"data.mean={number_list(datamodule.mean)}", f"data.std={number_list(datamodule.std)}",
             f"model.arch={hparams['arch']}", "model.head=abn"]
    for key, default in (("split", None), ("branch_depth", "full"), ("map_kernel_size", 3), ("model_kwargs", {})):
        value = hparams.get(key)
        if value is not None and value != default:
            parts.append(f"model.{key}={override_value(value)}")
    parts.append(f"init_from={ckpt_path}")
    return " ".join(parts) + " " + SUPERVISION_HINT


def export(args: argparse.Namespace) -> dict[str, Any]:
    """Check the checkpoint and data, then write the export; returns what was written (and the fine-tune command)."""
    hparams = read_checkpoint(args.ckpt_path, EXPLAIN_FIX).get("hyper_parameters") or {}
    if hparams.get("head") != "abn":
        raise ValueError(f"{args.ckpt_path} has head={hparams.get('head')!r}: only head=abn has the attention map M "
                         "that is exported and fine-tuned; export a checkpoint trained with model.head=abn")
    if (hparams.get("task") or "multiclass") != "multiclass":
        raise ValueError("the exported folder holds one class per image (class folders); this checkpoint is "
                         "multi-label: export a single-label (multiclass) ABN")
    device = resolve_device(args.device)
    net = load_network(args.ckpt_path, device)
    cfg = data_config(args.ckpt_path, args.overrides)
    datamodule = instantiate(cfg.data)
    facts = adopt_data_facts(cfg, datamodule)
    check_model_fits_data(cfg, net, hparams, facts)
    dataset = split_dataset(datamodule, args.split)
    indices = choose_indices(len(dataset), args.num_images, args.indices, args.seed)
    folders = class_folders(getattr(datamodule, "classes", []) or [], net.num_classes)
    earlier = earlier_export(args.out, args.overwrite)  # refused before the work, removed once it succeeded
    exported = collect(net, datamodule, dataset, indices, folders, args.split, device, args.batch_size)
    missing = sorted(set(folders) - {Path(item.name).parts[1] for item in exported})
    if missing:
        raise ValueError(f"the {len(exported)} chosen images miss the class(es) {', '.join(missing[:8])}; data=folder "
                         "finds the classes from the class folders, so fine-tuning needs an image of every class: "
                         "choose more images (--num-images) or other ones (--indices)")
    for path in earlier:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    boxes = write(args.out, exported)
    size = tuple(exported[0].image.shape[-2:])
    command = fine_tune_command(args.ckpt_path, args.out, datamodule, hparams, size)
    out = args.out
    lines = [f"Exported {len(exported)} images of the {args.split} split of {args.ckpt_path}:",
             f"  images:        {out / 'images' / 'train'}/<class>/",
             f"  maps to edit:  {out / 'maps' / 'train'}/<class>/ (greyscale: white = look here, black = not here)",
             f"  side by side:  {out / 'side_by_side'}/<class>/",
             f"  boxes:         {out / 'boxes.csv' if boxes else 'none (the data has no boxes)'}"]
    if size[0] != size[1]:
        lines.append(f"note: the images are {size[1]}×{size[0]} px; data=folder resizes them to squares of "
                     "data.image_size")
    lines += [f"Edit the maps in {out / 'maps'}, or write edited copies with",
              f"  python scripts/edit_maps_example.py {out}     (into {out / 'edited_maps'}: then "
              f"data.mask_dir={out / 'edited_maps'})",
              "Then fine-tune from the checkpoint on the images and their (edited) maps:", f"  {command}"]
    print("\n".join(lines))
    return {"images": len(exported), "boxes": boxes, "command": command, "indices": indices}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt_path", help="a .ckpt file of an abn-train run with model.head=abn")
    parser.add_argument("overrides", nargs="*", metavar="data=...",
                        help="data settings as abn-explain takes them: data=<name>, data.<key>=<value>")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (refused if it holds an export)")
    parser.add_argument("--split", choices=("train", "val", "test"), default="train")
    parser.add_argument("--num-images", type=int, default=64, help="images drawn (seeded) from the split")
    parser.add_argument("--indices", type=int, nargs="+", help="these images of the split instead of a draw")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the draw")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    args = parser.parse_intermixed_args(argv)  # data overrides may come after the options
    try:
        return export(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        sys.exit(f"export_maps.py: {error}")


if __name__ == "__main__":
    main()
