"""Training-time item order: a stateless, resumable epoch sampler and per-item random seeds.

Every epoch's order and every item's augmentation draws are functions of ``(seed, epoch)`` alone, so

* a run resumed from a checkpoint written in the middle of an epoch continues with exactly the batches (and the same
  random crops/flips) that the uninterrupted run would have seen: the sampler simply starts ``start`` items later;
* the draws do not depend on the number of DataLoader workers or on which worker loads an item (each item carries its
  own seed, used through :func:`data.transforms.item_generator`);
* under ``torchrun`` every process draws the same permutation and takes every ``world``-th item (as PyTorch's
  ``DistributedSampler``, padding with the first items when the size does not divide evenly).
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from torch.utils.data import Dataset, Sampler

_MIX = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: spreads (seed, epoch) pairs over the generator's seed space


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A torch generator seeded from ``(seed, epoch)`` (the same on every process and in every run)."""
    return torch.Generator().manual_seed((int(seed) * _MIX + int(epoch)) % (2 ** 63))


class EpochSampler(Sampler):
    """Yields ``(index, item_seed)`` pairs for one epoch: a permutation of ``range(n)`` (or ``0..n-1`` in order with
    ``shuffle=False``) drawn from :func:`epoch_generator` ``(seed, epoch)``, this process's share of it (positions
    ``rank, rank + world, ...``), starting after the first ``start`` items of the share.

    :meth:`set_epoch` chooses the epoch; :meth:`set_start` skips items already trained on (a mid-epoch resume; it
    applies to the next epoch iterated only). Wrap the dataset in :class:`SeededItems` so the seeds reach the
    transforms.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        if n < 1:
            raise ValueError(f"EpochSampler needs at least one item, got {n}")
        self.n, self.seed, self.shuffle, self.rank, self.world = int(n), int(seed), bool(shuffle), int(rank), int(world)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        self.start = max(0, int(start))

    def share(self) -> int:
        """Items of this process per epoch."""
        return -(-self.n // self.world)

    def __len__(self) -> int:
        return max(0, self.share() - self.start)

    def items(self) -> list[Tuple[int, int]]:
        """This process's ``(index, item_seed)`` pairs of the current epoch, all of them (ignores ``start``)."""
        g = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2 ** 62, (self.n,), generator=g)
        total = self.share() * self.world
        if total > self.n:
            order = torch.cat([order, order[: total - self.n]])
        mine = order[self.rank::self.world].tolist()
        return [(i, int(seeds[i])) for i in mine]

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        start, self.start = self.start, 0
        return iter(self.items()[start:])


class SeededItems(Dataset):
    """A view of ``dataset`` indexed by ``(index, item_seed)`` pairs (from :class:`EpochSampler`): item ``index``
    is built with its random draws taken from a generator seeded with ``item_seed``. Other attributes (``sizes``,
    ``pairs``, ...) are the wrapped dataset's."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        from data.transforms import item_generator

        if isinstance(key, tuple):
            index, seed = key
            with item_generator(seed):
                return self.dataset[index]
        return self.dataset[key]

    def __getattr__(self, name):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def training_sampler(dataset: Dataset, opt, seed: Optional[int]) -> EpochSampler:
    """The :class:`EpochSampler` of a training run: shuffled unless ``--serial_batches``; under torchrun this
    process's share (``util.distributed`` rank and world size)."""
    from util import distributed

    rank, world = (distributed.rank(), distributed.world_size()) if distributed.is_distributed() else (0, 1)
    return EpochSampler(len(dataset), seed if seed is not None else 0, shuffle=not opt.serial_batches,
                        rank=rank, world=world)
