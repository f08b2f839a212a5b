"""Training from the teacher cache: per-batch teacher log-probs without a teacher model."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from taid_vlm.cache.format import compare_fingerprints, fingerprint, read_index
from taid_vlm.config import ConfigError
from taid_vlm.data.types import IGNORE_INDEX
from taid_vlm.losses.sparse import TopKLogprobs


class CacheMismatchError(ConfigError):
    """The cache was made for other data, tokenizer, template or length budget."""


def dense_logprobs(topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, rest_mass: torch.Tensor,
                   vocab_size: int) -> torch.Tensor:
    """``[N, V]`` teacher log-probs: the top-k kept, the rest mass spread evenly over the others.

    The training step does not call this (it hands ``TopKLogprobs`` to the fused loss, which builds
    one chunk at a time with the same construction); it is for inspection and tests.

    Args:
        topk_ids: ``[N, k]`` int; topk_logprobs: ``[N, k]``; rest_mass: ``[N]``.
    """
    return TopKLogprobs(topk_ids, topk_logprobs, rest_mass, vocab_size).dense()


class TeacherCache:
    """Reads a cache written by ``cache-teacher``; ``rows(ids)`` gives a batch's teacher rows.

    Lazy: opening reads only each shard's sample ids and row offsets; ``rows(ids)`` reads just the
    requested samples' row ranges through memory-mapped ``safe_open`` handles (the OS pages them in
    and can drop them again), so memory stays flat in the size of the cache and each rank touches
    only the rows its own batches need. What stays resident is the id -> (shard, rows) map,
    O(samples), not O(tokens).
    """

    KEYS = ("topk_ids", "topk_logprobs", "rest_mass", "targets")
    OPEN_SHARDS = 16  # safe_open handles kept between calls (an LRU: shards are read in data order)

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir)
        self.index = read_index(self.dir)
        self.top_k = int(self.index["top_k"])
        self.vocab_size = int(self.index["vocab_size"])
        self._where: dict[str, tuple[int, int, int]] = {}
        self._paths: list[Path] = []
        self._handles: OrderedDict[int, Any] = OrderedDict()
        for si, name in enumerate(self.index["shards"]):
            path = self.dir / name
            if not path.is_file():
                raise FileNotFoundError(f"teacher.cache: shard {name} is missing; re-run cache-teacher to finish it")
            self._paths.append(path)
            with safe_open(str(path), framework="pt") as f:
                ids = json.loads(f.metadata()["ids"])
                off = f.get_tensor("offsets").tolist()
            for j, sid in enumerate(ids):
                self._where[str(sid)] = (si, off[j], off[j + 1])

    def _shard(self, si: int) -> Any:
        handle = self._handles.pop(si, None)
        if handle is None:
            handle = safe_open(str(self._paths[si]), framework="pt")
            while len(self._handles) >= self.OPEN_SHARDS:
                self._handles.popitem(last=False)
        self._handles[si] = handle
        return handle

    def __getstate__(self) -> dict[str, Any]:
        # safe_open handles do not pickle (DataLoader workers, spawn): they are reopened on demand.
        return {**self.__dict__, "_handles": OrderedDict()}

    def check(self, *, data: str, tokenizer: Any, template: str | None, max_length: int,
              tokenizer_setting: str = "student.tokenizer") -> None:
        """Raise ``CacheMismatchError`` naming each fingerprint field that differs.

        ``tokenizer`` is the one whose ids the run reads from the cache (the student's when both
        share it, the teacher's across tokenizers); ``tokenizer_setting`` names where it came from.
        """
        current = fingerprint(data=data, tokenizer=tokenizer, template=template, max_length=max_length)
        bad = compare_fingerprints(self.index["fingerprint"], current)
        fix = "re-run cache-teacher for this configuration"
        if "tokenizer" in bad and tokenizer_setting in ("teacher.tokenizer", "teacher.path"):
            fix = (f"its ids are in the teacher tokenizer it was written with and {tokenizer_setting} names another "
                   f"one; set teacher.tokenizer to that one ({self.dir / self.index.get('teacher_tokenizer', '')}) "
                   f"or {fix}")
        if bad:
            raise CacheMismatchError(
                f"teacher.cache: {self.dir} was made for different {', '.join(bad)} "
                f"(stored {[self.index['fingerprint'][b] for b in bad]}, now {[current[b] for b in bad]}); {fix}"
            )
        if len(tokenizer) != self.vocab_size:
            raise CacheMismatchError(f"teacher.cache: vocab size {self.vocab_size} != {tokenizer_setting} length "
                                     f"{len(tokenizer)}")

    def teacher_tokenizer(self, source: str | None = None, *, trust_remote_code: bool = False) -> Any:
        """The teacher tokenizer for a student with another one: ``source`` (the run's teacher.tokenizer
        or teacher.path) when given, else the copy ``cache-teacher`` stored beside the cache."""
        from transformers import AutoTokenizer

        if not source:
            stored = self.index.get("teacher_tokenizer")
            if not stored or not (self.dir / stored).is_dir():
                raise CacheMismatchError(f"teacher.cache: {self.dir} holds no copy of the teacher's tokenizer "
                                         "(written before cross-tokenizer caches); set teacher.tokenizer to it, "
                                         "or re-run cache-teacher")
            source = str(self.dir / stored)
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)

    def teacher_labels(self, sample_id: str) -> torch.Tensor:
        """``[L]`` the sample's cached teacher response ids laid out as labels: each assistant turn's
        ids, -100 before each turn (what ``data.alignment.label_runs`` reads back as turns)."""
        rows = self.rows([sample_id], keys=("targets", "run_start"))
        ids, starts = rows["targets"].long(), rows["run_start"].bool()
        # Position of row i: one -100 before each turn that starts at or before it, then i ids.
        pos = torch.arange(ids.numel()) + starts.long().cumsum(0)
        pos += 0 if bool(starts[:1].any()) else 1  # (every turn's first row is flagged; be safe anyway)
        out = torch.full((int(pos[-1]) + 1 if ids.numel() else 1,), IGNORE_INDEX, dtype=torch.long)
        out[pos] = ids
        return out

    @property
    def has_turns(self) -> bool:
        """Whether the shards store turn boundaries (``run_start``; caches written before
        cross-tokenizer support do not, and only serve a student with the teacher's tokenizer)."""
        return not self._paths or "run_start" in self._shard(0).keys()

    def __contains__(self, sample_id: str) -> bool:
        return str(sample_id) in self._where

    def __len__(self) -> int:
        return len(self._where)

    def counts(self, ids: list[str]) -> torch.Tensor:
        """``[S]`` number of cached response tokens of each sample."""
        return torch.tensor([b - a for _, a, b in (self._where[str(i)] for i in ids)], dtype=torch.int64)

    def rows(self, ids: list[str], keys: tuple[str, ...] = KEYS, lengths: list[int] | None = None
             ) -> dict[str, torch.Tensor]:
        """Concatenated rows of the given samples, in order, read from disk now.

        Args:
            lengths: read only the first ``lengths[i]`` rows of sample i (the turns a
                cross-tokenizer alignment kept); all rows by default.
        Returns:
            ``{"topk_ids": [N, k] int32, "topk_logprobs": [N, k], "rest_mass": [N], "targets": [N]}``
            (or only ``keys``), N = the samples' cached response tokens.
        """
        missing = [i for i in ids if str(i) not in self._where]
        if missing:
            raise KeyError(f"teacher.cache has no entry for sample(s) {missing[:3]}")
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        for j, sid in enumerate(ids):
            si, a, b = self._where[str(sid)]
            if lengths is not None:
                b = min(b, a + int(lengths[j]))
            f = self._shard(si)
            for k in keys:
                parts[k].append(f.get_slice(k)[a:b])
        return {k: torch.cat(v) for k, v in parts.items()}
