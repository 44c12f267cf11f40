"""A small data set held whole on the training device, batched, augmented and normalised there.

Two CPU cores running torchvision transforms in worker processes cannot feed a GPU training ResNet-20 on CIFAR.
The small sets fit on the device as uint8 (the 50k CIFAR training images are 150 MB), and a random crop of the
zero-padded image plus a horizontal flip is one gather per axis on a whole batch. ``on_device=true`` in the
CIFAR, SVHN and Fashion-MNIST configs switches their three loaders to :class:`DeviceBatches`.

The random numbers (order, crop offsets, flips) come from a CPU generator seeded with ``seed + epoch``: a run is
reproducible, and the same on CPU and GPU. Under DDP each rank takes its own shard of the epoch's order, because
Lightning adds a ``DistributedSampler`` only to a ``DataLoader``.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision import datasets

from .resumable import Position, pass_start, repeat_to


class DeviceBatches:
    """Batches ``(images, labels)`` of one split held on ``device``: float images normalised with ``mean``/``std``,
    int64 labels.

    ``images`` are uint8 N×C×H×W. Training batches (``shuffle=True``) come in a new order every epoch; ``padding``
    > 0 crops a random H×W window of the image padded with ``padding`` zeros on every side, ``hflip`` mirrors each
    image with probability 1/2 (torchvision's ``RandomCrop(padding=…)`` and ``RandomHorizontalFlip``).
    ``out_chans`` repeats a single stored channel after normalisation (grey images for a 3-channel model).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        padding: int = 0,
        hflip: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        out_chans: Optional[int] = None,
        device: torch.device | str = "cpu",
        resume: Optional[Callable[[], Optional[Position]]] = None,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 N×C×H×W tensor, got {images.dtype} of shape "
                             f"{tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if len(images) == 0:
            raise ValueError("no images: the split is empty")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need one value per stored channel ({channels}), "
                             f"got {len(mean)} and {len(std)}")
        if batch_size < 1 or padding < 0:
            raise ValueError(f"batch_size must be ≥ 1 and padding ≥ 0, got {batch_size} and {padding}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of the {world_size} ranks")
        if out_chans is not None and out_chans != channels and channels != 1:
            raise ValueError(f"only a single channel can be repeated; the images have {channels}, "
                             f"out_chans={out_chans}")
        self.device = torch.device(device)
        self.images = images.contiguous().to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.padding, self.hflip, self.seed = padding, hflip, seed
        self.rank, self.world_size, self.out_chans = rank, world_size, out_chans
        self.epoch = 0
        # training: asked at the start of each pass for the (epoch, batches done) a resumed run continues from
        self.resume = resume

    # Lightning calls ``loader.sampler.set_epoch(epoch)`` at the start of every epoch: we are our own sampler.
    # A loader with a ``sampler`` must also have a ``batch_sampler`` for Lightning; none here.
    batch_sampler = None

    @property
    def sampler(self) -> "DeviceBatches":
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard_size(self) -> int:
        """Images per rank and epoch: all ranks get the same count (a few images repeat when N is not divisible)."""
        return math.ceil(len(self.images) / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.shard_size() // self.batch_size
        return math.ceil(self.shard_size() / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.epoch, start = pass_start(self.resume, self.epoch)
        order, offsets, flips = self.epoch_plan(self.epoch)
        self.epoch += 1  # looping again without set_epoch (outside Lightning) also reshuffles
        augment = self.padding > 0 or self.hflip
        for batch in range(start, len(self)):
            part = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
            images = self.images[order[part]]
            if augment:
                images = crop_and_flip(images, offsets[part], flips[part], self.padding)
            yield self.normalize(images), self.labels[order[part]]

    def epoch_plan(self, epoch: int) -> tuple[Tensor, Tensor, Tensor]:
        """This rank's image indices, crop offsets (top, left) and flips for one epoch, on the device.

        Every rank draws the same numbers for the whole epoch and keeps positions ``rank::world_size``, so the
        shards are disjoint (up to the few repeats that make them equal) and each image's crop is its own.
        """
        generator = torch.Generator().manual_seed(self.seed + epoch)
        total = len(self.images)
        order = torch.randperm(total, generator=generator) if self.shuffle else torch.arange(total)
        padded_total = self.shard_size() * self.world_size
        order = repeat_to(order, padded_total)
        offsets = torch.randint(0, 2 * self.padding + 1, (padded_total, 2), generator=generator)
        flips = torch.rand(padded_total, generator=generator) < 0.5  # drawn either way: hflip leaves the crops alone
        if not self.hflip:
            flips.zero_()
        mine = slice(self.rank, None, self.world_size)
        return order[mine].to(self.device), offsets[mine].to(self.device), flips[mine].to(self.device)

    def normalize(self, images: Tensor) -> Tensor:
        """As ToTensor then Normalize: x / 255, minus mean, over std (the same float32 operations)."""
        normalized = images.float().div_(255).sub_(self.mean).div_(self.std)
        if self.out_chans is not None and self.out_chans != normalized.shape[1]:
            normalized = normalized.expand(-1, self.out_chans, -1, -1)
        return normalized


def crop_and_flip(images: Tensor, offsets: Tensor, flips: Tensor, padding: int) -> Tensor:
    """The H×W window at ``offsets`` (B×2: top, left, each in [0, 2·padding]) of each image padded with zeros,
    mirrored where ``flips`` (B) is true: one gather over the rows, one over the columns."""
    count, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    rows = offsets[:, :1] + torch.arange(height, device=images.device)  # B×H
    columns = torch.arange(width, device=images.device).expand(count, width)
    columns = torch.where(flips[:, None], width - 1 - columns, columns) + offsets[:, 1:]  # B×W
    picked_rows = padded.gather(2, rows[:, None, :, None].expand(count, channels, height, padded.shape[3]))
    return picked_rows.gather(3, columns[:, None, None, :].expand(count, channels, height, width))


def raw_arrays(dataset: Dataset) -> tuple[Tensor, Tensor]:
    """The uint8 images (N×C×H×W) and int64 labels of a torchvision CIFAR, SVHN or (Fashion-)MNIST set, or of a
    ``Subset``/``ConcatDataset`` of them, in the dataset's order: the split the ``DataLoader`` path reads."""
    if isinstance(dataset, Subset):
        images, labels = raw_arrays(dataset.dataset)
        index = torch.as_tensor(dataset.indices, dtype=torch.int64)
        return images[index], labels[index]
    if isinstance(dataset, ConcatDataset):
        parts = [raw_arrays(part) for part in dataset.datasets]
        return torch.cat([images for images, _ in parts]), torch.cat([labels for _, labels in parts])
    if isinstance(dataset, datasets.CIFAR10):  # CIFAR-100 too: N×H×W×C numpy, a list of labels
        return torch.from_numpy(dataset.data).permute(0, 3, 1, 2), torch.as_tensor(dataset.targets, dtype=torch.int64)
    if isinstance(dataset, datasets.SVHN):  # N×C×H×W numpy (a transposed view), labels already 0–9
        return torch.from_numpy(dataset.data), torch.as_tensor(dataset.labels, dtype=torch.int64)
    if isinstance(dataset, datasets.MNIST):  # Fashion-MNIST too: N×H×W uint8 tensor
        return dataset.data.unsqueeze(1), dataset.targets.to(torch.int64)
    raise TypeError(f"{type(dataset).__name__} holds no uint8 image array; on_device=true works for CIFAR-10/100, "
                    "SVHN and Fashion-MNIST: set data.on_device=false for this data set")


class OnDeviceLoaders:
    """Mixin for a ``ClassificationDataModule`` of a small set (list it first among the bases): with
    ``on_device`` true the three loaders are :class:`DeviceBatches` of the splits ``setup`` made.

    The device is the trainer's (``strategy.root_device``), else the CPU. The module says which augmentation its
    training transform does in ``device_augmentation``. The order is seeded with the run's seed (``seed=`` of
    ``abn-train``, which Lightning passes on as ``PL_GLOBAL_SEED`` to every rank), else with ``data.seed``.
    """

    on_device: bool = False

    def device_augmentation(self) -> tuple[int, bool]:
        """(zero padding of the random crop, random horizontal flip) of the training transform."""
        raise NotImplementedError(f"{type(self).__name__} does not say how it augments on the device")

    def train_dataloader(self):
        return self.device_batches(self.train_set, train=True) if self.on_device else super().train_dataloader()

    def val_dataloader(self):
        return self.device_batches(self.val_set, train=False) if self.on_device else super().val_dataloader()

    def test_dataloader(self):
        return self.device_batches(self.test_set, train=False) if self.on_device else super().test_dataloader()

    def device_batches(self, dataset: Optional[Dataset], train: bool,
                       device: Optional[torch.device | str] = None) -> DeviceBatches:
        """One split as ``DeviceBatches`` on ``device`` (default: the trainer's, else the CPU)."""
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not been called")
        images, labels = raw_arrays(dataset)
        padding, hflip = self.device_augmentation() if train else (0, False)
        trainer = self.trainer
        if device is None:
            device = trainer.strategy.root_device if trainer is not None else "cpu"
        channels = images.shape[1]
        return DeviceBatches(
            images, labels, self.mean[:channels], self.std[:channels], self.batch_size,
            shuffle=train, drop_last=train and len(images) > self.batch_size, padding=padding, hflip=hflip,
            seed=int(os.environ.get("PL_GLOBAL_SEED", self.seed)),
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            out_chans=self.in_chans, device=device, resume=self.take_resume_position if train else None,
        )
