"""The training order and augmentation depend only on (run seed, epoch, position), and a resumed run's first pass
leaves out the batches its checkpoint had already trained (abn.data.resumable)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from abn.data import ShapesDataModule
from abn.data.resumable import EpochShuffle, SeededSamples, derived_seed


class RandomItems(Dataset):
    """Item i is (i, a random draw from torch's generator): what an augmenting transform does."""

    def __init__(self, count: int = 20):
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[int, float]:
        return index, torch.rand(()).item()


def passes(sampler: EpochShuffle, epochs: range) -> list[list[tuple[int, int]]]:
    out = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


def test_the_order_depends_only_on_the_seed_and_the_epoch():
    items = RandomItems()
    first, again = passes(EpochShuffle(items, 7, 4), range(3)), passes(EpochShuffle(items, 7, 4), range(3))
    torch.manual_seed(123)  # the global generator has no say
    assert first == again == passes(EpochShuffle(items, 7, 4), range(3))
    assert first[0] != first[1] and sorted(index for index, _ in first[1]) == list(range(20))
    assert passes(EpochShuffle(items, 8, 4), range(1)) != first[:1]


def test_a_resumed_pass_starts_after_the_batches_done_then_epochs_are_whole():
    items = RandomItems()
    (whole,) = passes(EpochShuffle(items, 7, 4), range(1, 2))
    positions = iter([(1, 3), None])
    resumed = EpochShuffle(items, 7, 4, resume=lambda: next(positions))
    assert list(resumed) == whole[3 * 4:]
    resumed.set_epoch(2)
    assert list(resumed) == passes(EpochShuffle(items, 7, 4), range(2, 3))[0]


@pytest.mark.parametrize("count", [20, 21], ids=["divides", "does not divide"])
def test_under_ddp_each_process_takes_its_share_of_the_one_order_and_resumes_inside_it(count):
    data = RandomItems(count)
    (whole,) = passes(EpochShuffle(data, 7, 4), range(1, 2))
    shares = [passes(EpochShuffle(data, 7, 4, num_replicas=2, rank=rank), range(1, 2))[0] for rank in (0, 1)]
    padded = whole + whole[:len(whole) % 2]  # the first pair again where the count is odd
    assert shares == [padded[0::2], padded[1::2]] and len(shares[0]) == len(shares[1])
    assert sorted({index for share in shares for index, _ in share}) == list(range(count))

    positions = iter([(1, 2)])  # 2 batches of 4 done on each process
    resumed = EpochShuffle(data, 7, 4, resume=lambda: next(positions), num_replicas=2, rank=1)
    assert list(resumed) == shares[1][2 * 4:]


def test_each_image_is_drawn_from_its_own_seed_and_the_global_generator_is_left_alone():
    seeded = SeededSamples(RandomItems())
    torch.manual_seed(1)
    first = seeded[(4, 99)]
    expected_next = torch.rand(())
    torch.manual_seed(2)
    assert seeded[(4, 99)] == first and seeded[(4, 100)] != first
    torch.manual_seed(1)
    seeded[(5, 3)]
    assert torch.rand(()) == expected_next  # the global stream goes on as if nothing had been drawn
    assert seeded[4][0] == 4  # a plain index (DDP's sampler) reads the image as it is


def test_worker_processes_load_the_same_batches_as_the_main_process():
    items = SeededSamples(RandomItems())
    loaders = [DataLoader(items, batch_size=4, sampler=EpochShuffle(items, 7, 4), num_workers=workers)
               for workers in (0, 2)]
    in_process, in_workers = ([torch.stack(batch).tolist() for batch in loader] for loader in loaders)
    assert in_process == in_workers


def test_derived_seeds_differ_per_tuple_and_suit_torch():
    seeds = {derived_seed(0, epoch, batch) for epoch in range(5) for batch in range(50)}
    assert len(seeds) == 250 and all(0 <= seed < 2**63 for seed in seeds)
    torch.manual_seed(max(seeds))
    assert derived_seed(-1, 0) != derived_seed(1, 0)


def shapes(**options) -> ShapesDataModule:
    module = ShapesDataModule(train_size=40, val_size=8, test_size=8, batch_size=4, **options)
    module.prepare_data()
    module.setup("fit")
    return module


def test_the_training_loader_follows_the_run_seed(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    sampler = shapes().train_dataloader().sampler
    assert isinstance(sampler, EpochShuffle) and sampler.seed == 3
    monkeypatch.delenv("PL_GLOBAL_SEED")  # seed=null: a plain shuffle from the global generator
    assert type(shapes().train_dataloader().sampler) is RandomSampler


def test_the_checkpoint_position_is_handed_to_the_first_pass_once():
    module = shapes()
    assert "position" not in module.state_dict()  # outside a fit there is nothing to continue
    module.load_state_dict({**module.state_dict(), "position": [2, 5]})
    assert module.take_resume_position() == (2, 5) and module.take_resume_position() is None


@pytest.mark.parametrize("position", [[1], [1, -2], ["1", 2], "1,2"])
def test_a_position_that_is_not_two_counts_is_named(position):
    module = shapes()
    with pytest.raises(ValueError, match=r"data position .* is not \[epoch, batches done\]"):
        module.load_state_dict({**module.state_dict(), "position": position})
