"""Deterministic data order for training, so the data position is a function of the step.

Epoch ``e`` visits the samples in ``randperm(n, seed + e)``; global micro-batch ``m`` of the run
is epoch ``m // per_epoch``, slot ``m % per_epoch``; rank ``r`` takes its ``batch_size`` slice.
Resuming at optimizer step ``s`` restarts at micro-batch ``s * grad_accum`` — exactly where the
interrupted run was, with no sampler state to save.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from taid_vlm.config import ConfigError


class MicroBatchPlan:
    """Which samples each rank sees in each micro-batch.

    Args:
        num_samples: size of the training set.
        batch_size: samples per micro-batch per rank.
        world_size, rank: the process group.
        seed: base seed of the per-epoch permutation.
    """

    def __init__(self, num_samples: int, batch_size: int, world_size: int, rank: int, seed: int) -> None:
        self.n, self.bs, self.world, self.rank, self.seed = num_samples, batch_size, world_size, rank, seed
        self.global_bs = batch_size * world_size
        # Incomplete global micro-batches are dropped so every rank always has a full share.
        self.per_epoch = num_samples // self.global_bs
        if self.per_epoch == 0:
            raise ConfigError(
                f"data.train: {num_samples} usable samples, fewer than train.batch_size x processes = "
                f"{self.global_bs}; lower train.batch_size or add data"
            )
        self._perm_epoch = -1
        self._perm: list[int] = []

    def indices(self, micro: int) -> list[int]:
        """Sample indices of global micro-batch ``micro`` for this rank."""
        epoch, slot = divmod(micro, self.per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = torch.randperm(self.n, generator=g).tolist()
            self._perm_epoch = epoch
        start = slot * self.global_bs + self.rank * self.bs
        return self._perm[start : start + self.bs]


class _MicroBatches(IterableDataset):
    def __init__(self, plan: MicroBatchPlan, samples: list, start: int, stop: int) -> None:
        self.plan, self.samples, self.start, self.stop = plan, samples, start, stop

    def __iter__(self) -> Iterator[list]:
        for m in range(self.start, self.stop):
            yield [self.samples[i] for i in self.plan.indices(m)]


def _as_is(samples: list) -> list:
    return samples


def micro_batch_loader(
    plan: MicroBatchPlan, samples: list, start: int, stop: int, collate: Callable[[list], Any] | None,
    num_workers: int,
) -> DataLoader:
    """Iterate micro-batches ``start .. stop-1`` in order, collated (encoding may use a worker) or,
    with ``collate=None``, as lists of samples (when the student's generations replace responses)."""
    ds = _MicroBatches(plan, samples, start, stop)
    collate = collate or _as_is
    # One worker keeps the order trivially; more workers would interleave an IterableDataset.
    return DataLoader(ds, batch_size=None, collate_fn=collate, num_workers=min(num_workers, 1))
