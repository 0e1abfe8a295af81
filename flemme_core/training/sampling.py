"""A data order that is a pure function of (seed, position): resumable and rank-independent.

The training stream is the concatenation of per-epoch permutations of the training
items, each drawn from ``(seed, epoch)``. Step ``s`` consumes stream positions
``[s*B, (s+1)*B)`` of the global batch ``B``; with ``W`` processes, rank ``r`` takes
the ``r``-th contiguous chunk of ``B/W`` positions. Every position also carries its own
augmentation seed (from ``(seed, position)``), so random crops and flips do not depend
on the number of workers or processes, and resuming at step ``s`` needs nothing but
``s``: the sampler simply starts there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

Key = tuple[int, int]  # (item index, augmentation seed)


def _mix(*values: int) -> int:
    """A well-mixed 31-bit seed from integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(1)[0] >> 1)


class StreamOrder:
    """Item index and augmentation seed of every position of the training stream."""

    def __init__(self, num_items: int, seed: int):
        self.num_items, self.seed = int(num_items), int(seed)
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(_mix(self.seed, epoch, 0x5EED))
            self._perm = torch.randperm(self.num_items, generator=gen).numpy()
            self._epoch = epoch
        return self._perm

    def key(self, position: int) -> Key:
        epoch, offset = divmod(position, self.num_items)
        return int(self.permutation(epoch)[offset]), _mix(self.seed, position, 0xA06)


class StepBatchSampler(Sampler[list[Key]]):
    """Yields this rank's keys for each step in ``[start_step, total_steps)``."""

    def __init__(self, order: StreamOrder, global_batch: int, start_step: int, total_steps: int,
                 rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            from ..errors import ConfigError

            raise ConfigError(f"train.batch_size {global_batch} must be divisible by the number of processes "
                              f"{world_size}; use a multiple of {world_size}")
        self.order, self.batch = order, global_batch
        self.start, self.total = start_step, total_steps
        self.local = global_batch // world_size
        self.rank = rank

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[Key]]:
        for step in range(self.start, self.total):
            first = step * self.batch + self.rank * self.local
            yield [self.order.key(p) for p in range(first, first + self.local)]


def share_random_state(transform: Any, state: np.random.RandomState) -> int:
    """Point every random transform inside ``transform`` (a MONAI transform or ``Compose``,
    nested or not) at one ``RandomState``; returns how many were found.

    Reseeding one shared generator per item costs microseconds, where
    ``Compose.set_random_state(seed)`` builds a new ``RandomState`` per transform (~0.1-0.5 ms
    each, i.e. several percent of a small training step).
    """
    from monai.transforms import Compose, Randomizable

    if isinstance(transform, Compose):
        return sum(share_random_state(t, state) for t in transform.transforms)
    if isinstance(transform, Randomizable):
        transform.set_random_state(state=state)  # dictionary transforms pass it to their inner ones
        return 1
    return 0


class SeededDataset(Dataset):
    """A MONAI dataset whose random transforms are re-seeded from each key's seed.

    All random transforms of ``base.transform`` draw, in pipeline order, from one shared
    generator, reseeded with the key's seed right before ``base[index]`` (a
    ``CacheDataset`` applies only the random tail of its pipeline to its cached item).
    Augmentation is then a pure function of the stream position, in any worker process.
    """

    def __init__(self, base: Any):
        self.base = base
        self.state = np.random.RandomState(0)
        transform = getattr(base, "transform", None)
        self.random = transform is not None and share_random_state(transform, self.state) > 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: Key | int) -> Any:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        if self.random:
            self.state.seed(seed)
        return self.base[index]


def plain(value: Any) -> Any:
    """MONAI MetaTensors -> plain tensors (metadata tracking slows every operation)."""
    if isinstance(value, torch.Tensor):
        return value.as_tensor() if hasattr(value, "as_tensor") else value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def collate(samples: list[Any]) -> dict[str, Any]:
    """MONAI's list collate (flattens multi-sample crops), then plain tensors; metadata dropped."""
    from monai.data.utils import list_data_collate

    batch = list_data_collate(samples)
    return {k: plain(v) for k, v in batch.items() if isinstance(v, torch.Tensor)}


def make_train_loader(dataset: Dataset, sampler: StepBatchSampler, num_workers: int,
                      pin_memory: bool = False) -> torch.utils.data.DataLoader:
    # a private generator: creating the loader's iterator must not draw from the global RNG
    # (that would shift dropout masks after a resume); augmentation is seeded per item anyway
    generator = torch.Generator().manual_seed(sampler.order.seed)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       collate_fn=collate, pin_memory=pin_memory, generator=generator,
                                       persistent_workers=False)
