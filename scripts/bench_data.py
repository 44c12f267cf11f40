"""Can the data loading keep up with training? Images/s of each data module's train loader against the model's.

    python scripts/bench_data.py --data shapes fashion_mnist --workers 0 2 --on-device
    python scripts/bench_data.py --data all --device cuda --workers 0 2 4 --pin-memory --on-device

For each data set and loader configuration (``DataLoader`` with each ``--workers`` count, ``--pin-memory``,
persistent workers as in training; with ``--on-device`` also the whole set on the device, ``data.on_device=true``)
it times ``--batches`` training batches, each moved to ``--device`` as Lightning would, after ``--warmup`` batches
of a first epoch: the timed batches start a second epoch, so the persistent workers are already up. The model's
training images/s is forward + backward + SGD step of the ABN ``--arch`` on a batch of the same shape on
``--device``. A loader keeps up when loader / model ≥ 1. On the CPU, loader workers and the model share the
cores during training; here they are timed one after the other, so the ratio is an upper bound there.

A data set whose files are not under ``--root`` is timed on a stand-in of its real size and format (random
pixels) written into a temporary directory, and the output says so; Fashion-MNIST comes from the Debian package
``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist) when installed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.nn.functional as F

from abn.data import (CelebADataModule, CIFAR10DataModule, CIFAR100DataModule, CompCarsDataModule,
                      FashionMNISTDataModule, ImageNetDataModule, ShapesDataModule, SVHNDataModule)
from abn.data.cifar import _files_present
from abn.data.fashion_mnist import SYSTEM_COPIES, copy_local_files, raw_folder
from abn.data.standins import (write_standin_celeba, write_standin_cifar, write_standin_compcars,
                               write_standin_fashion_mnist, write_standin_imagenet, write_standin_svhn)
from abn.models import create_model

DATA_SETS = ("shapes", "fashion_mnist", "cifar10", "cifar100", "svhn", "imagenet", "compcars", "celeba")
ON_DEVICE = ("fashion_mnist", "cifar10", "cifar100", "svhn")
COLUMNS = ("data", "loader", "workers", "pin memory", "batch", "loader img/s", "model img/s", "loader / model",
           "verdict")


def data_root(name: str, root: Path, scratch: Path) -> tuple[Path, Optional[str]]:
    """The root to read ``name`` from, and a note when that is a stand-in."""
    if name == "shapes":
        return root, None
    if name in ("imagenet", "compcars", "celeba"):
        markers = {"imagenet": root / "imagenet" / "train", "compcars": root / "compcars" / "image",
                   "celeba": root / "celeba" / "list_attr_celeba.txt"}
        if markers[name].exists():
            return root, None
        if name == "imagenet":
            write_standin_imagenet(scratch)
        elif name == "compcars":
            write_standin_compcars(scratch / "compcars", cars=[(1 + k // 3, 1 + k) for k in range(10)],
                                   train_per_model=40, test_per_model=2, image_size=(360, 480))
        else:
            write_standin_celeba(scratch, num_images=800)
        return scratch, (f"{name}: no files under {markers[name].parent}; timing a stand-in of the real format and "
                         f"a realistic image size in {scratch}")
    if name == "fashion_mnist":
        if copy_local_files(root, SYSTEM_COPIES):  # what the data module does: unpack the Debian copy into root
            return root, None
        write_standin_fashion_mnist(scratch)
        where = raw_folder(root)
    elif name in ("cifar10", "cifar100"):
        module_class = CIFAR100DataModule if name == "cifar100" else CIFAR10DataModule
        if _files_present(module_class.dataset_class, str(root)):
            return root, None
        write_standin_cifar(scratch, hundred=name == "cifar100")
        where = root / module_class.dataset_class.base_folder
    else:
        if (root / "svhn" / "train_32x32.mat").is_file() and (root / "svhn" / "test_32x32.mat").is_file():
            return root, None
        write_standin_svhn(scratch)
        where = root / "svhn"
    return scratch, (f"{name}: no files in {where}; timing a stand-in of the real size and format (random pixels) "
                     f"in {scratch}")


def make_module(name: str, root: Path, batch_size: int, workers: int, pin_memory: bool):
    common = {"batch_size": batch_size, "num_workers": workers, "pin_memory": pin_memory}
    if name == "shapes":
        return ShapesDataModule(**common)
    if name == "fashion_mnist":
        return FashionMNISTDataModule(root=str(root), search_dirs=[], download=False, **common)
    if name == "svhn":
        return SVHNDataModule(root=str(root), download=False, **common)
    if name == "imagenet":
        return ImageNetDataModule(root=str(root / "imagenet"), num_classes=None, **common)
    if name == "compcars":
        return CompCarsDataModule(root=str(root / "compcars"), **common)
    if name == "celeba":
        return CelebADataModule(root=str(root), **common)
    module_class = CIFAR100DataModule if name == "cifar100" else CIFAR10DataModule
    return module_class(root=str(root), download=False, **common)


def loader_speed(loader: Iterable, device: torch.device, batches: int, warmup: int) -> tuple[float, tuple[int, ...]]:
    """Images/s over ``batches`` batches moved to ``device``, and the batch shape; the timed batches begin a new
    epoch after ``warmup`` batches of a first one (which starts the persistent workers)."""
    for index, batch in enumerate(loader):
        if index + 1 >= warmup:
            break
    images_seen, done, shape = 0, 0, None
    synchronize(device)
    start = time.perf_counter()
    while done < batches:
        for batch in loader:
            images = batch[0].to(device, non_blocking=True)
            batch[1].to(device, non_blocking=True)
            images_seen, done, shape = images_seen + len(images), done + 1, tuple(images.shape)
            if done == batches:
                break
    synchronize(device)
    return images_seen / (time.perf_counter() - start), shape


def model_speed(arch: str, shape: tuple[int, ...], num_classes: int, device: torch.device, steps: int,
                warmup: int) -> float:
    """Training images/s of the ABN ``arch`` (forward, both losses, backward, SGD step) on a fixed batch."""
    torch.manual_seed(0)
    model = create_model(arch, head="abn", num_classes=num_classes, in_chans=shape[1]).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(shape, device=device)
    labels = torch.randint(0, num_classes, shape[:1], device=device)

    def step() -> None:
        out = model(images)
        loss = F.cross_entropy(out.logits, labels) + F.cross_entropy(out.att_logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * shape[0] / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def row(*cells) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def bench(name: str, root: Path, args, device: torch.device) -> None:
    """Print the table rows of one data set: each loader configuration against the model."""
    configurations = [("DataLoader", workers) for workers in args.workers]
    if args.on_device and name in ON_DEVICE:
        configurations.append(("on device", None))
    model = None
    for kind, workers in configurations:
        module = make_module(name, root, args.batch_size, workers or 0, args.pin_memory and kind == "DataLoader")
        module.setup("fit")
        if kind == "DataLoader":
            loader = module.train_dataloader()
        else:
            loader = module.device_batches(module.train_set, train=True, device=device)
        speed, shape = loader_speed(loader, device, args.batches, args.warmup)
        if model is None:  # the same for every configuration of this data set
            model = model_speed(args.arch, shape, module.num_classes, device, args.steps, args.warmup)
        ratio = speed / model
        workers_cell, pin_cell = ("–", "–") if workers is None else (workers, args.pin_memory)
        print(row(name, kind, workers_cell, pin_cell, args.batch_size, f"{speed:,.0f}", f"{model:,.0f}", f"{ratio:.2f}",
                  "keeps up" if ratio >= 1 else "too slow"), flush=True)
        del loader, module
    if args.on_device and name == "shapes":
        print("  (shapes has no on-device path: it is drawn in memory, and its DataLoader needs no workers)",
              flush=True)
    elif args.on_device and name not in ON_DEVICE:
        print(f"  ({name} has no on-device path: its images are JPEG files decoded by the workers)", flush=True)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["shapes", "fashion_mnist"], choices=[*DATA_SETS, "all"])
    parser.add_argument("--root", type=Path, default=Path("data"), help="the data root (paths.data_dir)")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 2], help="DataLoader worker counts to time")
    parser.add_argument("--pin-memory", action="store_true", help="DataLoader(pin_memory=True); needs CUDA")
    parser.add_argument("--on-device", action="store_true", help="also time the whole set on --device")
    parser.add_argument("--batches", type=int, default=50, help="timed loader batches (over epochs if needed)")
    parser.add_argument("--steps", type=int, default=5, help="timed model training steps")
    parser.add_argument("--warmup", type=int, default=2, help="loader batches and model steps before timing")
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if min(args.workers) < 0 or min(args.batches, args.steps, args.batch_size) < 1 or args.warmup < 1:
        parser.error("--workers must be ≥ 0; --batches, --steps, --batch-size and --warmup ≥ 1")
    device = torch.device(args.device)
    names = list(DATA_SETS) if "all" in args.data else list(dict.fromkeys(args.data))

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}; model: {args.arch} (ABN), batch {args.batch_size}; "
          f"{args.batches} timed loader batches, {args.steps} timed model steps, {args.warmup} warm-up")
    with tempfile.TemporaryDirectory(prefix="bench_data_") as scratch:
        roots = {}
        for name in names:
            roots[name], note = data_root(name, args.root, Path(scratch) / name)
            if note:
                print(note)
        print("\n" + row(*COLUMNS))
        print(row(*["---"] * len(COLUMNS)), flush=True)
        for name in names:
            bench(name, roots[name], args, device)


if __name__ == "__main__":
    main()
