"""Training from the teacher cache: per-batch teacher log-probs without a teacher model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from taid_vlm.cache.format import compare_fingerprints, fingerprint, read_index, read_shard
from taid_vlm.config import ConfigError


class CacheMismatchError(ConfigError):
    """The cache was made for other data, tokenizer, template or length budget."""


def dense_logprobs(topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, rest_mass: torch.Tensor,
                   vocab_size: int) -> torch.Tensor:
    """``[N, V]`` teacher log-probs: the top-k kept, the rest mass spread evenly over the others.

    Args:
        topk_ids: ``[N, k]`` int; topk_logprobs: ``[N, k]``; rest_mass: ``[N]``.
    """
    n, k = topk_ids.shape
    out = torch.empty(n, vocab_size, dtype=torch.float32, device=topk_logprobs.device)
    others = vocab_size - k
    if others > 0:
        # An exhausted remainder would give -inf for tokens the student may still predict; a tiny
        # floor keeps reverse-KL-type losses finite (the loss renormalises anyway).
        fill = torch.log(rest_mass.float().clamp_min(1e-12) / others)
        out.copy_(fill[:, None].expand(n, vocab_size))
    else:
        out.fill_(-math.inf)
    out.scatter_(1, topk_ids.long(), topk_logprobs.float())
    return out


class TeacherCache:
    """Reads a cache written by ``cache-teacher``; ``rows(ids)`` gives a batch's teacher rows."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir)
        self.index = read_index(self.dir)
        self.top_k = int(self.index["top_k"])
        self.vocab_size = int(self.index["vocab_size"])
        self._where: dict[str, tuple[int, int, int]] = {}
        self._shards: list[dict[str, torch.Tensor]] = []
        for si, name in enumerate(self.index["shards"]):
            path = self.dir / name
            if not path.is_file():
                raise FileNotFoundError(f"teacher.cache: shard {name} is missing; re-run cache-teacher to finish it")
            ids, rows = read_shard(path)
            self._shards.append(rows)
            off = rows["offsets"].tolist()
            for j, sid in enumerate(ids):
                self._where[str(sid)] = (si, off[j], off[j + 1])

    def check(self, *, data: str, tokenizer: Any, template: str | None, max_length: int) -> None:
        """Raise ``CacheMismatchError`` naming each fingerprint field that differs."""
        current = fingerprint(data=data, tokenizer=tokenizer, template=template, max_length=max_length)
        bad = compare_fingerprints(self.index["fingerprint"], current)
        if bad:
            raise CacheMismatchError(
                f"teacher.cache: {self.dir} was made for different {', '.join(bad)} "
                f"(stored {[self.index['fingerprint'][b] for b in bad]}, now {[current[b] for b in bad]}); "
                "re-run cache-teacher for this configuration"
            )
        if len(tokenizer) != self.vocab_size:
            raise CacheMismatchError(f"teacher.cache: vocab size {self.vocab_size} != tokenizer length {len(tokenizer)}")

    def __contains__(self, sample_id: str) -> bool:
        return str(sample_id) in self._where

    def counts(self, ids: list[str]) -> torch.Tensor:
        """``[S]`` number of cached response tokens of each sample."""
        return torch.tensor([b - a for _, a, b in (self._where[str(i)] for i in ids)], dtype=torch.int64)

    def rows(self, ids: list[str]) -> dict[str, torch.Tensor]:
        """Concatenated rows of the given samples, in order (``topk_ids [N, k]``, ..., ``targets [N]``)."""
        missing = [i for i in ids if str(i) not in self._where]
        if missing:
            raise KeyError(f"teacher.cache has no entry for sample(s) {missing[:3]}")
        keys = ("topk_ids", "topk_logprobs", "rest_mass", "targets")
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        for sid in ids:
            si, a, b = self._where[str(sid)]
            for k in keys:
                parts[k].append(self._shards[si][k][a:b])
        return {k: torch.cat(v) for k, v in parts.items()}
