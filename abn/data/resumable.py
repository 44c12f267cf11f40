"""Training batches that a resumed run reads exactly as the interrupted run would have read them.

A run resumed from a checkpoint must see the same images, in the same order, with the same random crops and flips
as the run that was stopped, or its final weights differ. Saving the random generators' states is not enough:
worker processes keep their own generators (and persistent workers carry them across epochs), and Lightning
fetches a batch ahead of the step it trains. So nothing random depends on what ran before; it is derived:

- the order of an epoch from (run seed, epoch) (:class:`EpochShuffle`);
- each image's augmentation from a seed drawn with that order, one per position (:class:`SeededSamples` seeds
  torch's generator with it while the image is loaded, in whichever process loads it);
- the training step's own randomness (dropout) from (run seed, epoch, batch): ``ABNModule.on_train_batch_start``.

The checkpoint holds only where the run stands: the epoch to run next and the batches of it already trained (the
data module's ``state_dict``). A run resumed mid-epoch starts the sampler after those batches without loading
them. Nothing depends on ``data.num_workers``. Under DDP each process takes its own share of the same epoch order
(positions ``rank::world size``), so the same holds for every process.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

# where a run stands: (the epoch it runs next, the batches of that epoch already trained)
Position = tuple[int, int]


def run_seed() -> Optional[int]:
    """The run's ``seed=`` as Lightning's ``seed_everything`` passed it on to every process, or None (no seed)."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else None


def derived_seed(*parts: int) -> int:
    """A seed for torch (63 bits) made from integers such as (run seed, epoch, batch): every tuple its own stream."""
    return int(np.random.SeedSequence([part % 2**64 for part in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def repeat_to(items: torch.Tensor, total: int) -> torch.Tensor:
    """``items`` (along the first dimension) with its first ones repeated up to ``total``, as DistributedSampler gives
    every process as many when the count does not divide."""
    if total <= len(items):
        return items
    return items.repeat(math.ceil(total / len(items)), *[1] * (items.dim() - 1))[:total]


def pass_start(resume: Optional[Callable[[], Optional[Position]]], epoch: int) -> Position:
    """Where a pass over the training batches starts: the position ``resume`` gives (the first pass of a resumed
    run), else the start of ``epoch``."""
    position = resume() if resume is not None else None
    return position if position is not None else (epoch, 0)


class EpochShuffle(DistributedSampler):
    """A new order every epoch, the same in every run with this ``seed``: it depends only on (seed, epoch).

    Yields ``(index, image seed)`` pairs for :class:`SeededSamples`. ``set_epoch`` (Lightning calls it at every
    epoch start) chooses the epoch. ``resume`` is asked at the start of each pass for a position (epoch, batches
    done) to continue from: the first pass of a resumed run leaves out the batches already trained.

    Under DDP (``torch.distributed`` initialised, or ``num_replicas``/``rank`` given) each process keeps positions
    ``rank::num_replicas`` of the epoch's order, the first ones repeated where the count does not divide; being a
    ``DistributedSampler``, Lightning keeps it instead of putting its own in place."""

    def __init__(self, data_source: Dataset, seed: int, batch_size: int,
                 resume: Optional[Callable[[], Optional[Position]]] = None, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None):
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        super().__init__(data_source, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size, self.resume = batch_size, resume

    def __iter__(self) -> Iterator[tuple[int, int]]:
        self.epoch, batches_done = pass_start(self.resume, self.epoch)
        skip = batches_done * self.batch_size
        generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch))
        count = len(self.dataset)
        order = torch.randperm(count, generator=generator)
        image_seeds = torch.randint(0, 2**62, (count,), generator=generator)
        pairs = repeat_to(torch.stack([order, image_seeds], dim=1), self.total_size)
        return map(tuple, pairs[self.rank::self.num_replicas][skip:].tolist())


class SeededSamples(Dataset):
    """``dataset`` read with ``(index, image seed)`` keys: torch's random generator is seeded with the image seed
    while the image is loaded and augmented, and restored after. A plain index (another sampler's) reads the
    image with the generator as it is."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, image_seed = key
        with torch.random.fork_rng(devices=[]):  # the CPU generator only: augmentation runs on the CPU
            torch.default_generator.manual_seed(image_seed)
            return self.dataset[index]
