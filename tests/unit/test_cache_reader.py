"""The cache reader is lazy: opening a cache reads ids and offsets only, rows come from disk on demand."""

from __future__ import annotations

import pickle

import pytest
import torch

from taid_vlm.cache.format import read_shard, write_index, write_shard
from taid_vlm.cache.reader import TeacherCache
from taid_vlm.cache.writer import topk_rows


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    pytest.skip(f"/proc/self/status has no {field}")


def _write_cache(root, n_shards: int, samples: int, tokens: int, vocab: int = 512, k: int = 64):
    g = torch.Generator().manual_seed(0)
    names = []
    for s in range(n_shards):
        ids = [f"s{s}-{j}" for j in range(samples)]
        rows = topk_rows(torch.randn(samples * tokens, vocab, generator=g), k, torch.float16)
        rows["targets"] = torch.randint(0, vocab, (samples * tokens,), generator=g, dtype=torch.int32)
        rows["offsets"] = torch.arange(samples + 1, dtype=torch.int64) * tokens
        names.append(f"shard-{s:05d}.safetensors")
        write_shard(root / names[-1], ids, rows)
    write_index(root, {"fingerprint": {}, "top_k": k, "vocab_size": vocab, "dtype": "float16", "shards": names})
    return names


def test_rows_read_on_demand_equal_the_shards(tmp_path):
    names = _write_cache(tmp_path, n_shards=3, samples=4, tokens=5)
    cache = TeacherCache(tmp_path)
    assert len(cache) == 12 and "s2-3" in cache and "nope" not in cache
    want = ["s2-1", "s0-0", "s1-3", "s2-1"]  # across shards, out of order, repeated
    rows = cache.rows(want)
    shards = [read_shard(tmp_path / n)[1] for n in names]
    for key in TeacherCache.KEYS:
        expect = torch.cat([shards[int(i[1])][key][int(i[3]) * 5:(int(i[3]) + 1) * 5] for i in want])
        assert torch.equal(rows[key], expect), key
    assert cache.counts(want).tolist() == [5, 5, 5, 5]
    assert set(cache.rows(["s0-1"], keys=("targets",))) == {"targets"}
    # Picklable for DataLoader workers: handles are reopened there.
    again = pickle.loads(pickle.dumps(cache))
    assert torch.equal(again.rows(want)["topk_ids"], rows["topk_ids"])


def test_open_handles_are_bounded(tmp_path):
    _write_cache(tmp_path, n_shards=5, samples=1, tokens=2)
    cache = TeacherCache(tmp_path)
    cache.OPEN_SHARDS = 2
    for s in range(5):
        cache.rows([f"s{s}-0"])
    assert len(cache._handles) == 2


def test_reading_a_whole_large_cache_keeps_memory_flat(tmp_path):
    # ~50 MB of rows in 4 shards, read sample by sample as an epoch would. Shards are memory-mapped:
    # keeping every shard open (the old reader) leaves every touched page of the cache resident; with
    # at most one shard open at a time, what stays mapped is about one shard.
    _write_cache(tmp_path, n_shards=4, samples=8, tokens=4000)
    shard = max(p.stat().st_size for p in tmp_path.glob("shard-*.safetensors"))
    before = _rss_bytes("RssFile")
    cache = TeacherCache(tmp_path)
    cache.OPEN_SHARDS = 1
    for s in range(4):
        for j in range(8):
            assert cache.rows([f"s{s}-{j}"])["topk_ids"].shape == (4000, 64)
    grown = _rss_bytes("RssFile") - before
    assert shard > 10 * 2**20
    assert grown < 1.5 * shard, (grown, shard)
