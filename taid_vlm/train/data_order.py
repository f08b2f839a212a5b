"""Deterministic data order for training, so the data position is a function of the step.

Epoch ``e`` visits the samples in ``randperm(n, seed + e)``; global micro-batch ``m`` of the run
is epoch ``m // per_epoch``, slot ``m % per_epoch``; rank ``r`` takes its ``batch_size`` slice.
Resuming at optimizer step ``s`` restarts at micro-batch ``s * grad_accum`` — exactly where the
interrupted run was, with no sampler state to save.

Streams (``StreamPlan``) have no random access: each rank reads its shard of the stream in order
(optionally through a shuffle buffer) and the position is the stream's own ``state_dict``
(``datasets.IterableDataset.state_dict``), saved with each checkpoint.
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
        # A tensor, not a list: 8 bytes per sample instead of a Python int object each.
        self._perm = torch.empty(0, dtype=torch.long)

    def indices(self, micro: int) -> list[int]:
        """Sample indices of global micro-batch ``micro`` for this rank."""
        epoch, slot = divmod(micro, self.per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = torch.randperm(self.n, generator=g)
            self._perm_epoch = epoch
        start = slot * self.global_bs + self.rank * self.bs
        return self._perm[start : start + self.bs].tolist()


class _MicroBatches(IterableDataset):
    def __init__(self, plan: MicroBatchPlan, samples: list, start: int, stop: int) -> None:
        self.plan, self.samples, self.start, self.stop = plan, samples, start, stop

    def __iter__(self) -> Iterator[list]:
        for m in range(self.start, self.stop):
            yield [self.samples[i] for i in self.plan.indices(m)]


def _as_is(samples: list) -> list:
    return samples


def micro_batch_loader(
    plan: MicroBatchPlan | StreamPlan, samples: Any, start: int, stop: int, collate: Callable[[list], Any] | None,
    num_workers: int,
) -> Any:
    """Iterate micro-batches ``start .. stop-1`` in order, collated (encoding may use a worker) or,
    with ``collate=None``, as lists of samples (when the student's generations replace responses).
    ``samples`` is any sequence (a list, or ``LazySamples`` converting records on access); a
    ``StreamPlan`` reads its own stream and ignores it."""
    if isinstance(plan, StreamPlan):
        return plan.micro_batches(start, stop, collate or _as_is)
    ds = _MicroBatches(plan, samples, start, stop)
    collate = collate or _as_is
    # One worker keeps the order trivially; more workers would interleave an IterableDataset.
    return DataLoader(ds, batch_size=None, collate_fn=collate, num_workers=min(num_workers, 1))


class StreamPlan:
    """Micro-batches read in order from a stream (``datasets.IterableDataset``).

    Rank ``r`` reads its shard (``datasets.distributed.split_dataset_by_node``), through a shuffle
    buffer of ``shuffle_buffer`` items when > 0 (seeded; the buffer's content is not part of the
    saved state, so a resume with a buffer is not exact). When the stream ends, the next epoch
    starts it again (``set_epoch``); a stream that yields nothing is an error.

    Args:
        ds: the stream of raw rows.
        items: ``ds -> iterable of items`` (e.g. records -> samples), applied per epoch.
        batch_size, world_size, rank, seed, shuffle_buffer: as above.
    """

    per_epoch = None  # unknown: a stream's length is not known in advance

    def __init__(self, ds: Any, items: Callable[[Any], Any], batch_size: int, world_size: int, rank: int,
                 seed: int, shuffle_buffer: int = 0) -> None:
        self.base, self.items, self.bs, self.world, self.rank = ds, items, batch_size, world_size, rank
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.epoch = 0
        self.ds = self._stream(0)
        self._loaded = False

    def _stream(self, epoch: int) -> Any:
        # A fresh object per epoch: a stream restored with load_state_dict would replay that state
        # on every later pass.
        from datasets.distributed import split_dataset_by_node

        ds = split_dataset_by_node(self.base, rank=self.rank, world_size=self.world) if self.world > 1 else self.base
        if self.shuffle_buffer:
            ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        ds.set_epoch(epoch)
        return ds

    def state_dict(self) -> dict[str, Any]:
        """The stream position after the last item handed out: ``{"epoch", "stream"}``."""
        return {"epoch": self.epoch, "stream": self.ds.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.ds = self._stream(self.epoch)
        self.ds.load_state_dict(state["stream"])
        self._loaded = True

    def micro_batches(self, start: int, stop: int, collate: Callable[[list], Any]) -> Iterator[Any]:
        """Micro-batches ``start .. stop-1``: from the loaded state, or (no state) after skipping
        ``start`` micro-batches of the stream."""
        it = iter(self.items(self.ds))
        skip = 0 if self._loaded else start * self.bs
        got_any = self._loaded  # a restored position may sit at the very end of a non-empty stream
        for _ in range(start, stop):
            chunk: list = []
            while len(chunk) < self.bs:
                try:
                    item = next(it)
                except StopIteration:
                    if not got_any:
                        raise ValueError("data.train: the stream yielded no records in a whole pass") from None
                    self.epoch += 1
                    self.ds = self._stream(self.epoch)
                    it, got_any = iter(self.items(self.ds)), False
                    continue
                got_any = True
                if skip:
                    skip -= 1
                    continue
                chunk.append(item)
            batch = collate(chunk)
            if isinstance(batch, dict) and "read" not in batch:
                batch["read"] = len(chunk)
            yield batch
